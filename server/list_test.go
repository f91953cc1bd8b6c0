package server_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/store"
)

// startRuns starts n runs of job (whose overlap must allow them) from a few
// concurrent callers and returns their ids in the order the store assigned
// them.
func startRuns(t *testing.T, b *testBundle, job string, n int) []int64 {
	t.Helper()
	ctx := testContext(t)
	const callers = 8
	var (
		mu   sync.Mutex
		ids  []int64
		errs []error
		wg   sync.WaitGroup
	)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < n; i += callers {
				res, err := b.runs.StartRun(ctx, &batonv1.StartRunRequest{Job: job})
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					ids = append(ids, res.GetRun().GetId())
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("StartRun(%s): %d of %d failed, first: %v", job, len(errs), n, errs[0])
	}
	return sortedDesc(ids)
}

// sortedDesc returns ids newest (highest) first.
func sortedDesc(ids []int64) []int64 {
	out := slices.Clone(ids)
	slices.Sort(out)
	slices.Reverse(out)
	return out
}

// seedRuns writes n finished runs of job, without task instances,
// straight into the store, in
// transactions of 100 (short enough not to hold up the scheduler's
// writes), and returns their ids newest first: a fixture for listing
// many runs without starting each through the scheduler.
func seedRuns(t *testing.T, b *testBundle, job string, n int) []int64 {
	t.Helper()
	// Thousands of writes under -race on a loaded machine take longer than
	// waitTimeout, which bounds waits for the server, not this.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	j, err := b.st.JobGet(ctx, &store.JobGetParams{Name: job})
	if err != nil {
		t.Fatalf("JobGet(%s): %v", job, err)
	}
	var ids []int64
	for len(ids) < n {
		var batch []int64 // reset when InTx retries fn
		err = b.st.InTx(ctx, func(tx store.Store) error {
			batch = batch[:0]
			for range min(100, n-len(ids)) {
				res, err := tx.RunCreate(ctx, &store.RunCreateParams{
					JobID: j.ID, JobName: j.Name, JobVersion: j.Version, Overlap: store.OverlapAllow,
				})
				if err != nil {
					return err
				}
				if _, err := tx.RunTransition(ctx, &store.RunTransitionParams{
					ID: res.Run.ID, From: []store.RunState{store.RunRunning}, To: store.RunSucceeded,
				}); err != nil {
					return err
				}
				batch = append(batch, res.Run.ID)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("seed %d runs of %s: %v", n, job, err)
		}
		ids = append(ids, batch...)
	}
	return sortedDesc(ids)
}

// listPage calls ListRuns and returns the ids of the page and its token.
func listPage(t *testing.T, b *testBundle, req *batonv1.ListRunsRequest) ([]int64, string) {
	t.Helper()
	res, err := b.runs.ListRuns(testContext(t), req)
	if err != nil {
		t.Fatalf("ListRuns(%v): %v", req, err)
	}
	var ids []int64
	for _, r := range res.GetRuns() {
		ids = append(ids, r.GetId())
		if len(r.GetTasks()) != 0 {
			t.Errorf("ListRuns run %d has %d tasks, want none (GetRun only)", r.GetId(), len(r.GetTasks()))
		}
	}
	return ids, res.GetNextPageToken()
}

// TestListRunsPages: page tokens walk every run exactly once, newest first;
// a job filter holds across pages; a run started while paging does not
// appear on a later page; the last page has no token.
func TestListRunsPages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	applyJob(t, b, overlap(etlJob, "allow"))
	applyJob(t, b, overlap(withName(etlJob, "other"), "allow"))
	etl := startRuns(t, b, "etl", 7)
	other := startRuns(t, b, "other", 3)
	all := sortedDesc(append(append([]int64(nil), etl...), other...))

	tests := []struct {
		job   string
		size  int32
		want  []int64
		pages int
	}{
		{"", 3, all, 4},
		{"", 5, all, 2},
		{"", 10, all, 1},
		{"", 11, all, 1},
		{"", 1, all, 10},
		{"etl", 3, etl, 3},
		{"etl", 7, etl, 1},
		{"other", 2, other, 2},
		{"nope", 2, nil, 1},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("job=%s,size=%d", tc.job, tc.size), func(t *testing.T) {
			var got []int64
			token := ""
			pages := 0
			for {
				ids, next := listPage(t, b, &batonv1.ListRunsRequest{Job: tc.job, PageSize: tc.size, PageToken: token})
				pages++
				if len(ids) > int(tc.size) {
					t.Errorf("page %d has %d runs, want at most %d", pages, len(ids), tc.size)
				}
				got = append(got, ids...)
				if next == "" {
					break
				}
				if pages > len(tc.want)+1 {
					t.Fatalf("ListRuns still hands out tokens after %d pages", pages)
				}
				token = next
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("runs over all pages (-want +got):\n%s", diff)
			}
			if pages != tc.pages {
				t.Errorf("pages = %d, want %d", pages, tc.pages)
			}
		})
	}

	// A run started between pages is newer than the token: later pages
	// neither repeat nor gain a run.
	first, token := listPage(t, b, &batonv1.ListRunsRequest{PageSize: 4})
	newer := startRun(t, b, "etl")
	rest, _ := listPage(t, b, &batonv1.ListRunsRequest{PageSize: 100, PageToken: token})
	if diff := cmp.Diff(all, append(first, rest...)); diff != "" {
		t.Errorf("pages around a new run %d (-want +got):\n%s", newer.GetId(), diff)
	}
	if now, _ := listPage(t, b, &batonv1.ListRunsRequest{PageSize: 1}); len(now) != 1 || now[0] != newer.GetId() {
		t.Errorf("first page after a new run = %v, want [%d]", now, newer.GetId())
	}
}

// TestListRunsPageSize: page_size 0 means 50, a size over 1000 is capped
// at 1000 (not refused), and a negative size or a token ListRuns did not
// hand out is INVALID_ARGUMENT.
func TestListRunsPageSize(t *testing.T) {
	t.Parallel()
	b := setup(t)
	applyJob(t, b, etlJob)
	all := seedRuns(t, b, "etl", 1002)

	ids, token := listPage(t, b, &batonv1.ListRunsRequest{})
	if diff := cmp.Diff(all[:50], ids); diff != "" {
		t.Errorf("ListRuns(page_size 0) (-want the newest 50 +got):\n%s", diff)
	}
	if token == "" {
		t.Errorf("ListRuns(page_size 0) has no token with %d runs left", len(all)-50)
	}
	for _, size := range []int32{1001, 5000} {
		ids, token := listPage(t, b, &batonv1.ListRunsRequest{PageSize: size})
		if diff := cmp.Diff(all[:1000], ids); diff != "" {
			t.Errorf("ListRuns(page_size %d) (-want the newest 1000 +got):\n%s", size, diff)
		}
		if token == "" {
			t.Fatalf("ListRuns(page_size %d) has no token with %d runs left", size, len(all)-1000)
		}
		rest, next := listPage(t, b, &batonv1.ListRunsRequest{PageSize: size, PageToken: token})
		if diff := cmp.Diff(all[1000:], rest); diff != "" || next != "" {
			t.Errorf("second page of ListRuns(page_size %d) = %v token %q, want %v and no token", size, rest, next, all[1000:])
		}
	}
	ids, _ = listPage(t, b, &batonv1.ListRunsRequest{PageSize: 1000})
	if len(ids) != 1000 {
		t.Errorf("ListRuns(page_size 1000) = %d runs, want 1000", len(ids))
	}

	_, err := b.runs.ListRuns(testContext(t), &batonv1.ListRunsRequest{PageSize: -1})
	wantInvalid(t, "ListRuns(page_size -1)", err, "page_size")
	for _, tok := range []string{"abc", "0", "-5", "1.5", "99999999999999999999"} {
		_, err := b.runs.ListRuns(testContext(t), &batonv1.ListRunsRequest{PageToken: tok})
		wantInvalid(t, fmt.Sprintf("ListRuns(page_token %q)", tok), err, "page_token")
	}
}

// TestWatchRunPages: a finished run with more events than WatchRun reads
// from the store at once is sent whole, in cursor order, and the stream
// then ends.
func TestWatchRunPages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, etlJob)
	id := seedRuns(t, b, "etl", 1)[0]
	const n = 2345 // more than two of WatchRun's pages of 1000
	evs := make([]*store.Event, n)
	for i := range evs {
		evs[i] = &store.Event{RunID: id, Item: store.NoItem, Message: fmt.Sprintf("event %d", i)}
	}
	if err := b.st.EventAppend(ctx, &store.EventAppendParams{Events: evs}); err != nil {
		t.Fatalf("EventAppend: %v", err)
	}
	got, _ := waitEnded(t, b.runs, id)
	if len(got) != n {
		t.Fatalf("WatchRun sent %d events, want %d", len(got), n)
	}
	for i, ev := range got {
		if want := fmt.Sprintf("event %d", i); ev.GetMessage() != want || (i > 0 && ev.GetCursor() <= got[i-1].GetCursor()) {
			t.Fatalf("event %d = %q cursor %d, want %q after cursor %d", i, ev.GetMessage(), ev.GetCursor(), want, got[max(i-1, 0)].GetCursor())
		}
	}
}
