package server_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// jsonBody encodes v as a JSON request body.
func jsonBody(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// decode unmarshals a gateway response body into m.
func decode(t *testing.T, what, body string, m proto.Message) {
	t.Helper()
	if err := protojson.Unmarshal([]byte(body), m); err != nil {
		t.Fatalf("%s: decode %q: %v", what, body, err)
	}
}

// restError decodes a gateway error body into the gRPC status it carries.
func restError(t *testing.T, what, body string) *status.Status {
	t.Helper()
	var s spb.Status
	decode(t, what, body, &s)
	return status.FromProto(&s)
}

// TestREST: the gateway answers as the gRPC API does: the same job and run
// as JSON, the documented codes as HTTP statuses, and request bodies with
// unknown fields refused with 400 before anything is done.
func TestREST(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	srv := b.srv

	// Apply over REST; gRPC sees the same job.
	code, body := srv.do(t, "POST", "/v1/jobs", jsonBody(t, map[string]string{"source": etlJob}))
	if code != http.StatusOK {
		t.Fatalf("POST /v1/jobs = %d %s, want 200", code, body)
	}
	var applied batonv1.ApplyJobResponse
	decode(t, "POST /v1/jobs", body, &applied)
	if !applied.GetCreated() || applied.GetJob().GetVersion() != 1 {
		t.Errorf("POST /v1/jobs = v%d created=%t, want v1 created=true", applied.GetJob().GetVersion(), applied.GetCreated())
	}
	got, err := b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "etl"})
	if err != nil {
		t.Fatalf("GetJob: %v", err)
	}
	if diff := cmp.Diff(got.GetJob(), applied.GetJob(), protocmp.Transform()); diff != "" {
		t.Errorf("job (-gRPC GetJob +REST apply):\n%s", diff)
	}
	code, body = srv.do(t, "GET", "/v1/jobs/etl", "")
	var restJob batonv1.GetJobResponse
	decode(t, "GET /v1/jobs/etl", body, &restJob)
	if code != http.StatusOK || !proto.Equal(got, &restJob) {
		t.Errorf("GET /v1/jobs/etl = %d %s, want 200 and the job gRPC returns", code, body)
	}

	// Unknown fields in a body are refused, and nothing is stored.
	for _, tc := range []struct{ path, body string }{
		{"/v1/jobs", jsonBody(t, map[string]string{"source": withName(etlJob, "typo"), "sauce": "x"})},
		{"/v1/jobs:validate", jsonBody(t, map[string]string{"source": etlJob, "sauce": "x"})},
		{"/v1/runs", jsonBody(t, map[string]any{"job": "etl", "param": map[string]string{"day": "tue"}})},
	} {
		code, body := srv.do(t, "POST", tc.path, tc.body)
		if code != http.StatusBadRequest {
			t.Errorf("POST %s with an unknown field = %d %s, want 400", tc.path, code, body)
		}
	}
	_, err = b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "typo"})
	wantCode(t, "GetJob(typo) after a refused REST apply", err, codes.NotFound)
	if n := countRuns(t, b, ""); n != 0 {
		t.Errorf("runs after a refused REST StartRun = %d, want 0", n)
	}

	// An invalid job file: 400 with the BadRequest detail naming the field.
	code, body = srv.do(t, "POST", "/v1/jobs", jsonBody(t, map[string]string{"source": etlJob + "    retrys: 3\n"}))
	if code != http.StatusBadRequest {
		t.Errorf("POST /v1/jobs with an invalid job = %d, want 400", code)
	}
	if fields := violations(restError(t, "POST /v1/jobs (invalid)", body)); !cmp.Equal(fields, []string{"tasks[load].retrys"}) {
		t.Errorf("POST /v1/jobs (invalid) BadRequest fields = %q, want [tasks[load].retrys]", fields)
	}

	// Start over REST; GET over REST equals gRPC's GetRun.
	code, body = srv.do(t, "POST", "/v1/runs", jsonBody(t, map[string]any{"job": "etl", "params": map[string]string{"day": "tue"}}))
	if code != http.StatusOK {
		t.Fatalf("POST /v1/runs = %d %s, want 200", code, body)
	}
	var started batonv1.StartRunResponse
	decode(t, "POST /v1/runs", body, &started)
	id := started.GetRun().GetId()
	code, body = srv.do(t, "GET", fmt.Sprintf("/v1/runs/%d", id), "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/runs/%d = %d %s, want 200", id, code, body)
	}
	var restRun batonv1.GetRunResponse
	decode(t, "GET /v1/runs/{id}", body, &restRun)
	grpcRun, err := b.runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: id})
	if err != nil {
		t.Fatalf("GetRun: %v", err)
	}
	if diff := cmp.Diff(grpcRun, &restRun, protocmp.Transform()); diff != "" {
		t.Errorf("run (-gRPC +REST):\n%s", diff)
	}
	if restRun.GetRun().GetParams()["day"] != "tue" || len(restRun.GetRun().GetTasks()) != 2 {
		t.Errorf("GET /v1/runs/%d = params %v, %d tasks, want day=tue and 2 tasks", id, restRun.GetRun().GetParams(), len(restRun.GetRun().GetTasks()))
	}
	// Lean JSON: zero values are left out.
	if strings.Contains(body, "restartCount") || strings.Contains(body, "endTime") {
		t.Errorf("GET /v1/runs/%d = %s, want zero-valued fields left out", id, body)
	}

	// Status codes as HTTP statuses.
	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/v1/runs/999999", "", http.StatusNotFound},
		{"GET", "/v1/runs/999999/events", "", http.StatusNotFound},
		{"GET", "/v1/runs/abc", "", http.StatusBadRequest},
		{"POST", "/v1/jobs", "not json", http.StatusBadRequest},
		{"GET", "/v1/jobs/nope", "", http.StatusNotFound},
		{"POST", "/v1/runs", `{"job":"etl"}`, http.StatusConflict},
		{"POST", "/v1/runs", `{"job":"etl","params":{"dya":"x"}}`, http.StatusBadRequest},
		{"POST", "/v1/runs", `{}`, http.StatusBadRequest},
		{"GET", "/v1/runs?page_token=abc", "", http.StatusBadRequest},
		{"POST", fmt.Sprintf("/v1/runs/%d:restart", id), `{}`, http.StatusBadRequest}, // FAILED_PRECONDITION
	} {
		if code, body := srv.do(t, tc.method, tc.path, tc.body); code != tc.want {
			t.Errorf("%s %s %s = %d %s, want %d", tc.method, tc.path, tc.body, code, body, tc.want)
		}
	}
	code, body = srv.do(t, "POST", "/v1/runs/999999:cancel", `{}`)
	if st := restError(t, "cancel an unknown run", body); code != http.StatusNotFound || st.Code() != codes.NotFound {
		t.Errorf("POST /v1/runs/999999:cancel = %d (%v), want 404 NOT_FOUND", code, st.Code())
	}

	// Cancel over REST, then watch the events over REST: the stream ends
	// with the run and has the events gRPC's WatchRun sends.
	code, body = srv.do(t, "POST", fmt.Sprintf("/v1/runs/%d:cancel", id), `{"reason":"rest"}`)
	if code != http.StatusOK {
		t.Fatalf("POST /v1/runs/%d:cancel = %d %s, want 200", id, code, body)
	}
	grpcEvents, _ := waitEnded(t, b.runs, id)
	code, body = srv.do(t, "GET", fmt.Sprintf("/v1/runs/%d/events", id), "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/runs/%d/events = %d %s, want 200", id, code, body)
	}
	var restEvents []*batonv1.RunEvent
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		var line struct {
			Result json.RawMessage `json:"result"`
			Error  json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line.Error != nil {
			t.Fatalf("events line %q: %v %s", sc.Text(), err, line.Error)
		}
		var resp batonv1.WatchRunResponse
		decode(t, "events line", string(line.Result), &resp)
		restEvents = append(restEvents, resp.GetEvent())
	}
	if len(restEvents) == 0 {
		t.Errorf("GET /v1/runs/%d/events sent no events", id)
	}
	if diff := cmp.Diff(grpcEvents, restEvents, protocmp.Transform()); diff != "" {
		t.Errorf("events (-gRPC WatchRun +REST):\n%s", diff)
	}
	code, body = srv.do(t, "POST", fmt.Sprintf("/v1/runs/%d:cancel", id), `{}`)
	if st := restError(t, "cancel a cancelled run", body); code != http.StatusBadRequest || st.Code() != codes.FailedPrecondition {
		t.Errorf("POST /v1/runs/%d:cancel again = %d (%v), want 400 FAILED_PRECONDITION", id, code, st.Code())
	}

	// The server's own pages.
	for _, tc := range []struct{ path, contains string }{
		{"/healthz", "ok"},
		{"/openapi.json", `"/v1/runs"`},
		{"/metrics", "go_goroutines"},
	} {
		if code, body := srv.do(t, "GET", tc.path, ""); code != http.StatusOK || !strings.Contains(body, tc.contains) {
			t.Errorf("GET %s = %d, want 200 containing %q", tc.path, code, tc.contains)
		}
	}
}
