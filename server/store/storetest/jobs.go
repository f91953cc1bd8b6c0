package storetest

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/server/store"
)

func testJob(t *testing.T, h Harness) {
	b := setup(t, h)
	apply := func(name string, n int) *store.JobApplyResult {
		t.Helper()
		res, err := b.s.JobApply(b.ctx, &store.JobApplyParams{
			Name: name, Description: "about " + name, Spec: spec(name, n), Source: "source " + name,
		})
		if err != nil {
			t.Fatalf("JobApply(%s, %d) = %v", name, n, err)
		}
		return res
	}
	get := func(p store.JobGetParams) *store.Job {
		t.Helper()
		j, err := b.s.JobGet(b.ctx, &p)
		if err != nil {
			t.Fatalf("JobGet(%+v) = %v", p, err)
		}
		return j
	}

	// A new name creates version 1.
	v1 := apply("load", 1)
	if !v1.Created {
		t.Fatal("JobApply(new) Created = false, want true")
	}
	want := &store.Job{ID: v1.Job.ID, Name: "load", Version: 1, Description: "about load",
		Spec: spec("load", 1), Source: "source load", CreatedAt: v1.Job.CreatedAt, UpdatedAt: v1.Job.UpdatedAt}
	if diff := cmp.Diff(want, v1.Job); diff != "" {
		t.Fatalf("JobApply(new) job mismatch (-want +got):\n%s", diff)
	}
	checkTime(t, "CreatedAt", v1.Job.CreatedAt)
	checkTime(t, "UpdatedAt", v1.Job.UpdatedAt)
	if v1.Job.ID <= 0 {
		t.Fatalf("JobApply(new) ID = %d, want positive", v1.Job.ID)
	}

	// An identical spec stores nothing.
	same := apply("load", 1)
	if same.Created {
		t.Fatal("JobApply(identical) Created = true, want false")
	}
	if diff := cmp.Diff(v1.Job, same.Job); diff != "" {
		t.Fatalf("JobApply(identical) job mismatch (-want +got):\n%s", diff)
	}

	// A changed spec makes the next version; the job keeps its id and
	// creation time.
	v2 := apply("load", 2)
	if !v2.Created || v2.Job.Version != 2 || v2.Job.ID != v1.Job.ID || !v2.Job.CreatedAt.Equal(v1.Job.CreatedAt) {
		t.Fatalf("JobApply(changed) = %+v created %v, want version 2 of job %d", v2.Job, v2.Created, v1.Job.ID)
	}
	if v2.Job.UpdatedAt.Before(v1.Job.UpdatedAt) {
		t.Fatalf("version 2 UpdatedAt %v is before version 1's %v", v2.Job.UpdatedAt, v1.Job.UpdatedAt)
	}

	for _, tc := range []struct {
		name string
		p    store.JobGetParams
		want *store.Job
	}{
		{"ByName", store.JobGetParams{Name: "load"}, v2.Job},
		{"ByID", store.JobGetParams{ID: v1.Job.ID}, v2.Job},
		{"ByIDAndName", store.JobGetParams{ID: v1.Job.ID, Name: "load"}, v2.Job},
		{"Version1", store.JobGetParams{ID: v1.Job.ID, Version: 1}, v1.Job},
		{"Version1ByName", store.JobGetParams{Name: "load", Version: 1}, v1.Job},
		{"Version2", store.JobGetParams{Name: "load", Version: 2}, v2.Job},
	} {
		if diff := cmp.Diff(tc.want, get(tc.p)); diff != "" {
			t.Errorf("%s: JobGet(%+v) mismatch (-want +got):\n%s", tc.name, tc.p, diff)
		}
	}
	for _, p := range []store.JobGetParams{
		{Name: "nope"}, {ID: v1.Job.ID + 1000}, {Name: "load", Version: 3}, {ID: v1.Job.ID, Name: "other"},
	} {
		_, err := b.s.JobGet(b.ctx, &p)
		wantErr(t, "JobGet(unknown)", err, store.ErrNotFound)
	}
	_, err := b.s.JobGet(b.ctx, &store.JobGetParams{})
	wantBadInput(t, "JobGet(no id, no name)", err)
	_, err = b.s.JobApply(b.ctx, &store.JobApplyParams{Name: "", Spec: spec("x", 1)})
	wantBadInput(t, "JobApply(empty name)", err)

	// JobList: current versions of live jobs, by name.
	aJob := apply("a-first", 1)
	list, err := b.s.JobList(b.ctx, &store.JobListParams{})
	if err != nil {
		t.Fatalf("JobList() = %v", err)
	}
	if diff := cmp.Diff([]*store.Job{aJob.Job, v2.Job}, list); diff != "" {
		t.Fatalf("JobList() mismatch (-want +got):\n%s", diff)
	}

	// Delete: refused while a run is not finished.
	wantErr(t, "JobDelete(unknown)", b.s.JobDelete(b.ctx, &store.JobDeleteParams{Name: "nope"}), store.ErrNotFound)
	r := b.run(t, v2.Job, store.OverlapForbid)
	wantErr(t, "JobDelete(with running run)", b.s.JobDelete(b.ctx, &store.JobDeleteParams{Name: "load"}), store.ErrConflict)
	get(store.JobGetParams{Name: "load"})
	if _, err := b.s.RunTransition(b.ctx, &store.RunTransitionParams{
		ID: r.ID, From: []store.RunState{store.RunRunning}, To: store.RunSucceeded,
	}); err != nil {
		t.Fatalf("RunTransition() = %v", err)
	}
	wantErr(t, "JobDelete()", b.s.JobDelete(b.ctx, &store.JobDeleteParams{Name: "load"}), nil)

	// A deleted job is gone by name and from the list, not by id.
	_, err = b.s.JobGet(b.ctx, &store.JobGetParams{Name: "load"})
	wantErr(t, "JobGet(deleted, by name)", err, store.ErrNotFound)
	if diff := cmp.Diff(v2.Job, get(store.JobGetParams{ID: v1.Job.ID})); diff != "" {
		t.Fatalf("JobGet(deleted, by id) mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(v1.Job, get(store.JobGetParams{ID: v1.Job.ID, Version: 1})); diff != "" {
		t.Fatalf("JobGet(deleted, by id, version 1) mismatch (-want +got):\n%s", diff)
	}
	list, err = b.s.JobList(b.ctx, &store.JobListParams{})
	if err != nil || len(list) != 1 || list[0].Name != "a-first" {
		t.Fatalf("JobList() after delete = %v, %v; want only a-first", list, err)
	}
	wantErr(t, "JobDelete(deleted)", b.s.JobDelete(b.ctx, &store.JobDeleteParams{Name: "load"}), store.ErrNotFound)
	_, err = b.tryRun(v2.Job, store.OverlapAllow, "")
	wantErr(t, "RunCreate(deleted job)", err, store.ErrNotFound)
	if got := b.getRun(t, r.ID); got.JobID != v1.Job.ID || got.JobName != "load" {
		t.Fatalf("RunGet() of a deleted job's run = %+v, want job %d load", got, v1.Job.ID)
	}

	// Applying the name again revives the job with the next version, even
	// with an identical spec.
	v3 := apply("load", 2)
	if !v3.Created || v3.Job.ID != v1.Job.ID || v3.Job.Version != 3 || !v3.Job.CreatedAt.Equal(v1.Job.CreatedAt) {
		t.Fatalf("JobApply(revive) = %+v created %v, want version 3 of job %d", v3.Job, v3.Created, v1.Job.ID)
	}
	if diff := cmp.Diff(v3.Job, get(store.JobGetParams{Name: "load"})); diff != "" {
		t.Fatalf("JobGet(revived) mismatch (-want +got):\n%s", diff)
	}
	b.run(t, v3.Job, store.OverlapForbid)
}
