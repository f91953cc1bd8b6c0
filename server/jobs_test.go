package server_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/testing/protocmp"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// etlJob is a job whose runs stay running while no agent is connected:
// extract becomes ready and waits for a slot, load waits for extract.
const etlJob = `name: etl
description: extract then load
params: {day: mon, region: eu}
tasks:
  - name: extract
    stage: 1
    run: [/bin/true]
  - name: load
    stage: 2
    run: [/bin/true, "${{ params.day }}"]
`

// withName returns src with its job name replaced.
func withName(src, name string) string {
	return strings.Replace(src, "name: etl\n", "name: "+name+"\n", 1)
}

// overlap returns src with an overlap policy added.
func overlap(src, policy string) string {
	return strings.Replace(src, "tasks:\n", "overlap: "+policy+"\ntasks:\n", 1)
}

// TestApplyJobInvalid: an invalid job file is refused with INVALID_ARGUMENT
// and a google.rpc.BadRequest naming the field at fault, and nothing is
// stored: neither a new job nor a new version of an existing one.
func TestApplyJobInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		src   string
		field string
	}{
		{
			name:  "unknown field",
			src:   "name: bad\ntasks:\n  - name: a\n    run: [x]\n    retrys: 3\n",
			field: "tasks[a].retrys",
		},
		{
			name: "cycle",
			src: "name: bad\ntasks:\n  - name: a\n    needs: [b]\n    run: [x]\n" +
				"  - name: b\n    needs: [a]\n    run: [x]\n",
			field: "tasks[a].needs",
		},
		{
			name:  "bad duration",
			src:   "name: bad\ntasks:\n  - name: a\n    run: [x]\n    timeout: 30 minutes\n",
			field: "tasks[a].timeout",
		},
		{
			name:  "not YAML",
			src:   "name: [bad\n",
			field: "",
		},
	}
	b := setup(t)
	ctx := testContext(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := b.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: tc.src})
			if tc.field == "" {
				wantCode(t, "ApplyJob", err, codes.InvalidArgument)
			} else {
				wantInvalid(t, "ApplyJob", err, tc.field)
			}
			_, err = b.jobs.ValidateJob(ctx, &batonv1.ValidateJobRequest{Source: tc.src})
			if tc.field == "" {
				wantCode(t, "ValidateJob", err, codes.InvalidArgument)
			} else {
				wantInvalid(t, "ValidateJob", err, tc.field)
			}
			_, err = b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "bad"})
			wantCode(t, "GetJob(bad) after a refused apply", err, codes.NotFound)
		})
	}
	list, err := b.jobs.ListJobs(ctx, &batonv1.ListJobsRequest{})
	if err != nil {
		t.Fatalf("ListJobs: %v", err)
	}
	if len(list.GetJobs()) != 0 {
		t.Errorf("ListJobs = %d jobs after refused applies, want none", len(list.GetJobs()))
	}

	// A refused new version leaves the current one as it was.
	v1, err := b.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: etlJob})
	if err != nil {
		t.Fatalf("ApplyJob(etl): %v", err)
	}
	_, err = b.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: etlJob + "    retrys: 3\n"})
	wantInvalid(t, "ApplyJob(etl with an unknown field)", err, "tasks[load].retrys")
	got, err := b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "etl"})
	if err != nil {
		t.Fatalf("GetJob(etl): %v", err)
	}
	if diff := cmp.Diff(v1.GetJob(), got.GetJob(), protocmp.Transform()); diff != "" {
		t.Errorf("GetJob(etl) after a refused new version (-before +after):\n%s", diff)
	}
}

// TestApplyJobVersions: applying stores a version only when the file
// changed; GetJob returns the current or an asked-for version with its task
// summary; ListJobs lists current versions by name.
func TestApplyJobVersions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)

	res, err := b.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: etlJob})
	if err != nil {
		t.Fatalf("ApplyJob: %v", err)
	}
	if !res.GetCreated() || res.GetJob().GetVersion() != 1 {
		t.Errorf("ApplyJob = v%d created=%t, want v1 created=true", res.GetJob().GetVersion(), res.GetCreated())
	}
	wantTasks := []*batonv1.JobTask{
		{Name: "extract", Stage: 1},
		{Name: "load", Stage: 2, Needs: []string{"extract"}},
	}
	if diff := cmp.Diff(wantTasks, res.GetJob().GetTasks(), protocmp.Transform()); diff != "" {
		t.Errorf("ApplyJob tasks (-want +got):\n%s", diff)
	}
	if res.GetJob().GetSource() != etlJob || res.GetJob().GetDescription() != "extract then load" {
		t.Errorf("ApplyJob = source %q description %q, want the file as applied", res.GetJob().GetSource(), res.GetJob().GetDescription())
	}

	again, err := b.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: etlJob})
	if err != nil {
		t.Fatalf("ApplyJob(unchanged): %v", err)
	}
	if again.GetCreated() || again.GetJob().GetVersion() != 1 {
		t.Errorf("ApplyJob(unchanged) = v%d created=%t, want v1 created=false", again.GetJob().GetVersion(), again.GetCreated())
	}

	changed := strings.Replace(etlJob, "region: eu", "region: us", 1)
	v2, err := b.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: changed})
	if err != nil {
		t.Fatalf("ApplyJob(changed): %v", err)
	}
	if !v2.GetCreated() || v2.GetJob().GetVersion() != 2 {
		t.Errorf("ApplyJob(changed) = v%d created=%t, want v2 created=true", v2.GetJob().GetVersion(), v2.GetCreated())
	}

	cur, err := b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "etl"})
	if err != nil {
		t.Fatalf("GetJob: %v", err)
	}
	if cur.GetJob().GetVersion() != 2 || cur.GetJob().GetSource() != changed {
		t.Errorf("GetJob(etl) = v%d, want v2 with the changed source", cur.GetJob().GetVersion())
	}
	old, err := b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "etl", Version: 1})
	if err != nil {
		t.Fatalf("GetJob(v1): %v", err)
	}
	if old.GetJob().GetVersion() != 1 || old.GetJob().GetSource() != etlJob {
		t.Errorf("GetJob(etl, 1) = v%d, want v1 with the first source", old.GetJob().GetVersion())
	}
	_, err = b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "etl", Version: 3})
	wantCode(t, "GetJob(etl, 3)", err, codes.NotFound)
	_, err = b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "etl", Version: -1})
	wantInvalid(t, "GetJob(etl, -1)", err, "version")
	_, err = b.jobs.GetJob(ctx, &batonv1.GetJobRequest{})
	wantInvalid(t, "GetJob()", err, "name")

	if _, err := b.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: withName(etlJob, "a-first")}); err != nil {
		t.Fatalf("ApplyJob(a-first): %v", err)
	}
	list, err := b.jobs.ListJobs(ctx, &batonv1.ListJobsRequest{})
	if err != nil {
		t.Fatalf("ListJobs: %v", err)
	}
	var names []string
	for _, j := range list.GetJobs() {
		names = append(names, fmt.Sprintf("%s v%d", j.GetName(), j.GetVersion()))
	}
	if diff := cmp.Diff([]string{"a-first v1", "etl v2"}, names); diff != "" {
		t.Errorf("ListJobs (-want +got):\n%s", diff)
	}
}

// TestDeleteJob: a job with an active run is not deleted
// (FAILED_PRECONDITION); an unknown job is NOT_FOUND; a deleted job is
// gone and cannot be started, but its runs are kept.
func TestDeleteJob(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	if _, err := b.jobs.ApplyJob(ctx, &batonv1.ApplyJobRequest{Source: etlJob}); err != nil {
		t.Fatalf("ApplyJob: %v", err)
	}
	run := startRun(t, b, "etl")

	_, err := b.jobs.DeleteJob(ctx, &batonv1.DeleteJobRequest{Name: "etl"})
	wantCode(t, "DeleteJob(etl) with an active run", err, codes.FailedPrecondition)
	if _, err := b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "etl"}); err != nil {
		t.Errorf("GetJob(etl) after a refused delete: %v", err)
	}
	_, err = b.jobs.DeleteJob(ctx, &batonv1.DeleteJobRequest{Name: "nope"})
	wantCode(t, "DeleteJob(nope)", err, codes.NotFound)
	_, err = b.jobs.DeleteJob(ctx, &batonv1.DeleteJobRequest{})
	wantInvalid(t, "DeleteJob()", err, "name")

	cancelAndWait(t, b, run.GetId())
	if _, err := b.jobs.DeleteJob(ctx, &batonv1.DeleteJobRequest{Name: "etl"}); err != nil {
		t.Fatalf("DeleteJob(etl) after its run ended: %v", err)
	}
	_, err = b.jobs.GetJob(ctx, &batonv1.GetJobRequest{Name: "etl"})
	wantCode(t, "GetJob(etl) after delete", err, codes.NotFound)
	_, err = b.runs.StartRun(ctx, &batonv1.StartRunRequest{Job: "etl"})
	wantCode(t, "StartRun(etl) after delete", err, codes.NotFound)
	if _, err := b.runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: run.GetId()}); err != nil {
		t.Errorf("GetRun(%d) of a deleted job's run: %v", run.GetId(), err)
	}
}
