package engine

import (
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/server/store"
)

func plain(task string, s store.InstanceState) Instance {
	return Instance{Task: task, Item: store.NoItem, State: s}
}

func itemOf(task string, i int, s store.InstanceState) Instance {
	return Instance{Task: task, Item: i, State: s}
}

const forEachJob = `
name: fe
tasks:
  - {name: list, run: [x]}
  - {name: fe, needs: [list], for_each: {items: [a, b, c]}, run: [x]}
  - {name: after, needs: [fe], run: [x]}
`

func TestRestart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		src   string
		insts []Instance
		mode  RestartMode
		from  string
		want  []Reset
		// then: the decisions of the restarted run
		wantStates map[string]store.InstanceState
	}{
		{
			name:  "from failure keeps succeeded tasks and reruns the failed and blocked ones",
			src:   chain,
			insts: []Instance{plain("a", S), plain("b", F), plain("c", B)},
			mode:  RestartFailed,
			want: []Reset{
				{Task: "b", Item: store.NoItem, From: F, To: P},
				{Task: "c", Item: store.NoItem, From: B, To: P},
			},
			wantStates: map[string]store.InstanceState{"a": S, "b": R, "c": P},
		},
		{
			name:  "cancelled, lost and skipped instances run again",
			src:   diamond,
			insts: []Instance{plain("a", L), plain("b", C), plain("ok", B), plain("onfail", Sk), plain("always", S)},
			mode:  RestartFailed,
			want: []Reset{
				{Task: "a", Item: store.NoItem, From: L, To: P},
				{Task: "b", Item: store.NoItem, From: C, To: P},
				{Task: "ok", Item: store.NoItem, From: B, To: P},
				{Task: "onfail", Item: store.NoItem, From: Sk, To: P},
				{Task: "always", Item: store.NoItem, From: S, To: P},
			},
			wantStates: map[string]store.InstanceState{"a": R, "b": R, "always": P},
		},
		{
			name:  "from a task reruns it and its downstream even when they succeeded",
			src:   chain,
			insts: []Instance{plain("a", S), plain("b", S), plain("c", S)},
			mode:  RestartFrom,
			from:  "b",
			want: []Reset{
				{Task: "b", Item: store.NoItem, From: S, To: P},
				{Task: "c", Item: store.NoItem, From: S, To: P},
			},
			wantStates: map[string]store.InstanceState{"a": S, "b": R, "c": P},
		},
		{
			name:  "from a stage-1 task reruns the later stages",
			src:   staged,
			insts: []Instance{plain("s1a", S), plain("s1b", S), plain("s2", S), plain("s3", S), plain("free", S)},
			mode:  RestartFrom,
			from:  "s1a",
			want: []Reset{
				{Task: "s1a", Item: store.NoItem, From: S, To: P},
				{Task: "s2", Item: store.NoItem, From: S, To: P},
				{Task: "s3", Item: store.NoItem, From: S, To: P},
			},
			wantStates: map[string]store.InstanceState{"s1a": R, "s1b": S, "s2": P, "free": S},
		},
		{
			name:  "all reruns everything",
			src:   chain,
			insts: []Instance{plain("a", S), plain("b", S), plain("c", F)},
			mode:  RestartAll,
			want: []Reset{
				{Task: "a", Item: store.NoItem, From: S, To: P},
				{Task: "b", Item: store.NoItem, From: S, To: P},
				{Task: "c", Item: store.NoItem, From: F, To: P},
			},
			wantStates: map[string]store.InstanceState{"a": R, "b": P, "c": P},
		},
		{
			name: "a for-each task resumes only its unfinished items",
			src:  forEachJob,
			insts: []Instance{
				plain("list", S), plain("fe", F), itemOf("fe", 0, S), itemOf("fe", 1, F), itemOf("fe", 2, C), plain("after", B),
			},
			mode: RestartFailed,
			want: []Reset{
				{Task: "fe", Item: store.NoItem, From: F, To: Ru},
				{Task: "fe", Item: 1, From: F, To: R},
				{Task: "fe", Item: 2, From: C, To: R},
				{Task: "after", Item: store.NoItem, From: B, To: P},
			},
			wantStates: map[string]store.InstanceState{"list": S, "fe": Ru, "after": P},
		},
		{
			name: "from a for-each task reruns every item",
			src:  forEachJob,
			insts: []Instance{
				plain("list", S), plain("fe", S), itemOf("fe", 0, S), itemOf("fe", 1, S), itemOf("fe", 2, S), plain("after", S),
			},
			mode: RestartFrom,
			from: "fe",
			want: []Reset{
				{Task: "fe", Item: store.NoItem, From: S, To: Ru},
				{Task: "fe", Item: 0, From: S, To: R},
				{Task: "fe", Item: 1, From: S, To: R},
				{Task: "fe", Item: 2, From: S, To: R},
				{Task: "after", Item: store.NoItem, From: S, To: P},
			},
			wantStates: map[string]store.InstanceState{"list": S, "fe": Ru, "after": P},
		},
		{
			name:       "a for-each task that never expanded goes back to pending",
			src:        forEachJob,
			insts:      []Instance{plain("list", F), plain("fe", B), plain("after", B)},
			mode:       RestartFailed,
			want:       []Reset{{Task: "list", Item: store.NoItem, From: F, To: P}, {Task: "fe", Item: store.NoItem, From: B, To: P}, {Task: "after", Item: store.NoItem, From: B, To: P}},
			wantStates: map[string]store.InstanceState{"list": R, "fe": P, "after": P},
		},
		{
			// The gap found in a trial: cleanup ran after the failed first run
			// (its completed edge was satisfied by a blocked publish) and must
			// follow the real publish after the restart.
			name:  "a cleanup behind a completed edge runs again after the rerun it follows",
			src:   cleanupJob,
			insts: []Instance{plain("extract", F), plain("publish", B), plain("cleanup", S)},
			mode:  RestartFailed,
			want: []Reset{
				{Task: "extract", Item: store.NoItem, From: F, To: P},
				{Task: "publish", Item: store.NoItem, From: B, To: P},
				{Task: "cleanup", Item: store.NoItem, From: S, To: P},
			},
			wantStates: map[string]store.InstanceState{"extract": R, "publish": P, "cleanup": P},
		},
		{
			name:  "a failure handler that ran is decided again",
			src:   diamond,
			insts: []Instance{plain("a", F), plain("b", S), plain("ok", B), plain("onfail", S), plain("always", S)},
			mode:  RestartFailed,
			want: []Reset{
				{Task: "a", Item: store.NoItem, From: F, To: P},
				{Task: "ok", Item: store.NoItem, From: B, To: P},
				{Task: "onfail", Item: store.NoItem, From: S, To: P},
				{Task: "always", Item: store.NoItem, From: S, To: P},
			},
			wantStates: map[string]store.InstanceState{"a": R, "b": S, "ok": P, "onfail": P, "always": P},
		},
		{
			name: "a succeeded for-each task downstream of a rerun reruns every item",
			src: `
name: fe2
tasks:
  - {name: first, run: [x]}
  - {name: fe, needs: [{task: first, status: completed}], for_each: {items: [a, b]}, run: [x]}
`,
			insts: []Instance{plain("first", F), plain("fe", S), itemOf("fe", 0, S), itemOf("fe", 1, S)},
			mode:  RestartFailed,
			want: []Reset{
				{Task: "first", Item: store.NoItem, From: F, To: P},
				{Task: "fe", Item: store.NoItem, From: S, To: Ru},
				{Task: "fe", Item: 0, From: S, To: R},
				{Task: "fe", Item: 1, From: S, To: R},
			},
			wantStates: map[string]store.InstanceState{"first": R, "fe": Ru},
		},
		{
			name:       "a succeeded run restarted from failure reruns nothing",
			src:        chain,
			insts:      []Instance{plain("a", S), plain("b", S), plain("c", S)},
			mode:       RestartFailed,
			want:       nil,
			wantStates: map[string]store.InstanceState{"a": S, "b": S, "c": S},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := compileYAML(t, tc.src)
			got, err := Restart(g, tc.insts, tc.mode, tc.from)
			if err != nil {
				t.Fatalf("Restart: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Restart resets (-want +got):\n%s", diff)
			}
			// Apply the resets and check the restarted run's first decisions.
			after := append([]Instance(nil), tc.insts...)
			for _, r := range got {
				for k := range after {
					if after[k].Task == r.Task && after[k].Item == r.Item {
						after[k].State = r.To
					}
				}
			}
			h := newHarness(t, tc.src, after...)
			h.want(tc.wantStates)
		})
	}
}

const cleanupJob = `
name: cleanup
tasks:
  - {name: extract, run: [x]}
  - {name: publish, needs: [extract], run: [x]}
  - {name: cleanup, needs: [{task: publish, status: completed}], run: [x]}
`

// TestRestartedCleanupFollowsPublish plays the restarted run through: the
// cleanup waits for the rerun publish and runs after it.
func TestRestartedCleanupFollowsPublish(t *testing.T) {
	t.Parallel()
	g := compileYAML(t, cleanupJob)
	insts := []Instance{plain("extract", F), plain("publish", B), plain("cleanup", S)}
	resets, err := Restart(g, insts, RestartFailed, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resets {
		for k := range insts {
			if insts[k].Task == r.Task && insts[k].Item == r.Item {
				insts[k].State = r.To
			}
		}
	}
	h := newHarness(t, cleanupJob, insts...)
	h.want(map[string]store.InstanceState{"extract": R, "publish": P, "cleanup": P})
	h.finish("extract", S, nil)
	h.want(map[string]store.InstanceState{"publish": R, "cleanup": P})
	h.finish("publish", S, nil)
	h.want(map[string]store.InstanceState{"cleanup": R})
}

func TestRestartUnknownTask(t *testing.T) {
	t.Parallel()
	g := compileYAML(t, chain)
	_, err := Restart(g, []Instance{plain("a", F)}, RestartFrom, "nope")
	if err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("Restart(from nope) = %v, want an error naming the task", err)
	}
}

func TestRestartedForEachFinishes(t *testing.T) {
	t.Parallel()
	g := compileYAML(t, forEachJob)
	insts := []Instance{plain("list", S), plain("fe", F), itemOf("fe", 0, S), itemOf("fe", 1, F), itemOf("fe", 2, S), plain("after", B)}
	resets, err := Restart(g, insts, RestartFailed, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resets {
		for k := range insts {
			if insts[k].Task == r.Task && insts[k].Item == r.Item {
				insts[k].State = r.To
			}
		}
	}
	h := newHarness(t, forEachJob, insts...)
	h.finishItem("fe", 1, S)
	h.want(map[string]store.InstanceState{"fe": S, "after": R})
}

// TestForEachTenThousandItems runs a 10,000-item loop through the engine:
// five poison items fail the task without stopping the others, and a
// restart reruns exactly those five.
func TestForEachTenThousandItems(t *testing.T) {
	t.Parallel()
	const n = 10_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	src := `
name: big
params: {ids: "[` + strings.Join(ids, ",") + `]"}
tasks:
  - {name: fe, for_each: {param: ids}, max_parallel: 20, run: [x, '${{ item }}']}
  - {name: after, needs: [{task: fe, status: completed}], run: [x]}
`
	g := compileYAML(t, src)
	r, err := NewRun(g, g.Spec.Params, nil)
	if err != nil {
		t.Fatal(err)
	}
	var items int
	for _, c := range r.Start() {
		items += len(c.Items)
	}
	if items != n {
		t.Fatalf("expanded %d items, want %d", items, n)
	}
	poison := map[int]bool{7: true, 1234: true, 5000: true, 8888: true, 9999: true}
	for i := range n {
		state := S
		if poison[i] {
			state = F
		}
		r.Done(0, i, state, nil, "")
	}
	if got := r.State(0); got != F {
		t.Fatalf("for-each task after 5 poison items = %s, want failed", got)
	}
	if got := r.State(1); got != R {
		t.Errorf("completed-edge downstream = %s, want ready", got)
	}
	insts := []Instance{plain("fe", F), plain("after", S)}
	for i := range n {
		state := S
		if poison[i] {
			state = F
		}
		insts = append(insts, itemOf("fe", i, state))
	}
	resets, err := Restart(g, insts, RestartFailed, "")
	if err != nil {
		t.Fatal(err)
	}
	rerun := 0
	for _, rs := range resets {
		if rs.Item != store.NoItem {
			rerun++
			if !poison[rs.Item] {
				t.Errorf("restart reruns item %d, which succeeded", rs.Item)
			}
		}
	}
	if rerun != len(poison) {
		t.Errorf("restart reruns %d items, want %d", rerun, len(poison))
	}
}
