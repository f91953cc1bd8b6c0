package cli_test

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/client/cmd/baton/cli"
	"github.com/batonhq/baton/client/internal/fakeserver"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func TestJobApply(t *testing.T) {
	t.Parallel()
	b := setup(t)
	file := writeFile(t, "nightly.yaml", fakeserver.NightlyJob)

	b.run(t, "job", "apply", "-f", file).want(t, cli.ExitOK, "job nightly-dw-load: version 1 (created)\n", "")
	b.run(t, "job", "apply", "--file", file).want(t, cli.ExitOK, "job nightly-dw-load: version 1 (unchanged)\n", "")

	b.stdin = strings.Replace(fakeserver.NightlyJob, "Nightly", "Nightly (v2)", 1)
	b.run(t, "job", "apply", "-f", "-").want(t, cli.ExitOK, "job nightly-dw-load: version 2 (created)\n", "")
}

func TestJobApplyInvalid(t *testing.T) {
	t.Parallel()
	b := setup(t)
	file := writeFile(t, "nightly.yaml", fakeserver.NightlyJob)

	// The message lists every problem, one per line; the BadRequest details
	// repeat them, plus one the message does not say.
	st := status.New(codes.InvalidArgument, "line 7: task \"stage-orders\": run: must not be empty\n"+
		"line 12: task \"per-client\": needs[0].task: unknown task \"stage-customer\"")
	st, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: "tasks[stage-orders].run", Description: "must not be empty"},
		{Field: "tasks[per-client].needs[0].task", Description: "unknown task \"stage-customer\""},
		{Field: "tasks[cleanup].timeout", Description: "bad duration \"5x\""},
	}})
	if err != nil {
		t.Fatal(err)
	}
	b.srv.SetApplyError(st.Err())

	want := lines(
		"baton: "+file+": invalid job file",
		"  line 7: task \"stage-orders\": run: must not be empty",
		"  line 12: task \"per-client\": needs[0].task: unknown task \"stage-customer\"",
		"  tasks[cleanup].timeout: bad duration \"5x\"",
	)
	b.run(t, "job", "apply", "-f", file).want(t, cli.ExitError, "", want)
	b.run(t, "job", "validate", "-f", file).want(t, cli.ExitError, "", want)
}

func TestJobValidate(t *testing.T) {
	t.Parallel()
	b := setup(t)
	file := writeFile(t, "nightly.yaml", fakeserver.NightlyJob)

	b.run(t, "job", "validate", "-f", file).want(t, cli.ExitOK, file+": ok, 4 tasks\n", "")
	b.stdin = "name: one\ntasks:\n  - name: only\n    run: [true]\n"
	b.run(t, "job", "validate", "-f", "-").want(t, cli.ExitOK, "<stdin>: ok, 1 task\n", "")
	// Nothing was stored.
	b.run(t, "job", "list").want(t, cli.ExitOK, "NAME  VERSION  TASKS  UPDATED  DESCRIPTION\n", "")
}

func TestJobFileErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	missing := writeFile(t, "x.yaml", "") + ".gone"

	r := b.run(t, "job", "apply", "-f", missing)
	if r.code != cli.ExitError || !strings.Contains(r.stderr, "baton: read job file: open "+missing) {
		t.Errorf("apply missing file = %d %q, want exit 2 naming the file", r.code, r.stderr)
	}
	b.stdin = "name: bin\ntasks:\n  - {name: a, run: [x]}\n\xff\xfe\x00\x01"
	r = b.run(t, "job", "apply", "-f", "-")
	if r.code != cli.ExitError || r.stderr != "baton: job file <stdin> is not UTF-8 text (line 4): a job file is YAML; save it as UTF-8\n" {
		t.Errorf("apply binary file = %d %q, want exit 2 naming the file and line", r.code, r.stderr)
	}
	b.stdin = strings.Repeat("#", 4<<20+1)
	r = b.run(t, "job", "apply", "-f", "-")
	if r.code != cli.ExitError || r.stderr != "baton: job file <stdin> is larger than 4 MiB; the control plane accepts job files of at most 1 MiB\n" {
		t.Errorf("apply huge file = %d %q, want exit 2 and the limit", r.code, r.stderr)
	}
}

func TestJobListGetDelete(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.AddJob(&batonv1.Job{Name: "nightly-dw-load", Description: "Nightly data warehouse load", Source: "name: old\n",
		Tasks: []*batonv1.JobTask{{Name: "a"}}, UpdateTime: timestamppb.New(fakeserver.Base)})
	b.srv.AddJob(&batonv1.Job{Name: "nightly-dw-load", Description: "Nightly data warehouse load", Source: fakeserver.NightlyJob,
		Tasks: []*batonv1.JobTask{{Name: "a"}, {Name: "b"}}, UpdateTime: timestamppb.New(now)})
	b.srv.AddJob(&batonv1.Job{Name: "hourly", Source: "name: hourly", Tasks: []*batonv1.JobTask{{Name: "a"}}})

	b.run(t, "job", "list").want(t, cli.ExitOK, lines(
		"NAME             VERSION  TASKS  UPDATED                  DESCRIPTION",
		"hourly           1        1      -",
		"nightly-dw-load  2        2      2026-11-21 02:10:00 UTC  Nightly data warehouse load",
	), "")
	b.run(t, "job", "get", "nightly-dw-load").want(t, cli.ExitOK,
		"# job nightly-dw-load, version 2, applied 2026-11-21 02:10:00 UTC\n"+fakeserver.NightlyJob, "")
	b.run(t, "job", "get", "nightly-dw-load", "--version", "1").want(t, cli.ExitOK,
		"# job nightly-dw-load, version 1, applied 2026-11-21 02:00:00 UTC\nname: old\n", "")
	// A source without a final newline gets one.
	b.run(t, "job", "get", "hourly").want(t, cli.ExitOK, "# job hourly, version 1\nname: hourly\n", "")

	b.run(t, "job", "delete", "hourly").want(t, cli.ExitOK, "job hourly deleted\n", "")
	b.run(t, "job", "get", "hourly").want(t, cli.ExitError, "", "baton: get job \"hourly\": job \"hourly\" not found\n")
	b.run(t, "job", "get", "nightly-dw-load", "--version", "7").want(t, cli.ExitError, "",
		"baton: get job \"nightly-dw-load\": job \"nightly-dw-load\" has no version 7\n")

	// A job with an active run is kept.
	b.srv.AddRun(fakeserver.RunFixture{Run: &batonv1.Run{Job: "nightly-dw-load", State: batonv1.RunState_RUN_STATE_RUNNING}})
	b.run(t, "job", "delete", "nightly-dw-load").want(t, cli.ExitError, "",
		"baton: delete job \"nightly-dw-load\": job \"nightly-dw-load\" has an active run 1\n")
}

func TestJobJSON(t *testing.T) {
	t.Parallel()
	b := setup(t)
	file := writeFile(t, "nightly.yaml", fakeserver.NightlyJob)

	var applied batonv1.ApplyJobResponse
	decode(t, b.run(t, "-o", "json", "job", "apply", "-f", file), &applied)
	if applied.GetJob().GetName() != "nightly-dw-load" || !applied.GetCreated() {
		t.Errorf("apply -o json = %v, want the created job", &applied)
	}
	var validated batonv1.ValidateJobResponse
	decode(t, b.run(t, "job", "validate", "-f", file, "--output", "json"), &validated)
	if len(validated.GetJob().GetTasks()) != 4 {
		t.Errorf("validate -o json = %v, want 4 tasks", &validated)
	}
	var list batonv1.ListJobsResponse
	decode(t, b.run(t, "-o", "json", "job", "list"), &list)
	if len(list.GetJobs()) != 1 {
		t.Errorf("list -o json = %v, want 1 job", &list)
	}
	var got batonv1.GetJobResponse
	decode(t, b.run(t, "-o", "json", "job", "get", "nightly-dw-load"), &got)
	if got.GetJob().GetSource() != fakeserver.NightlyJob {
		t.Errorf("get -o json source = %q, want the job file", got.GetJob().GetSource())
	}
	var deleted batonv1.DeleteJobResponse
	decode(t, b.run(t, "-o", "json", "job", "delete", "nightly-dw-load"), &deleted)
}

// decode checks that r succeeded with one JSON document on stdout and
// decodes it into m.
func decode(t *testing.T, r result, m proto.Message) {
	t.Helper()
	if r.code != cli.ExitOK {
		t.Fatalf("exit code = %d, want 0; stderr: %s", r.code, r.stderr)
	}
	if err := protojson.Unmarshal([]byte(r.stdout), m); err != nil {
		t.Fatalf("stdout is not one JSON document: %v\n%s", err, r.stdout)
	}
}
