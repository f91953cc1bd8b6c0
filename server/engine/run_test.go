package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// harness drives one engine.Run the way the scheduler does: decisions to
// ready are taken as "the task ran", and the test reports outcomes.
type harness struct {
	t   *testing.T
	g   *Graph
	r   *Run
	log []string // every decision, "task:state" or "task[item]:state"
}

func compileYAML(t *testing.T, src string) *Graph {
	t.Helper()
	spec, err := job.Parse([]byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	g, err := Compile(spec)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return g
}

func newHarness(t *testing.T, src string, insts ...Instance) *harness {
	t.Helper()
	g := compileYAML(t, src)
	r, err := NewRun(g, g.Spec.Params, insts)
	if err != nil {
		t.Fatalf("NewRun: %v", err)
	}
	h := &harness{t: t, g: g, r: r}
	h.record(r.Start())
	return h
}

func (h *harness) record(changes []Change) {
	for _, c := range changes {
		name := h.g.Nodes[c.Task].Name
		if c.Item != store.NoItem {
			name = fmt.Sprintf("%s[%d]", name, c.Item)
		}
		h.log = append(h.log, name+":"+string(c.To))
	}
}

func (h *harness) idx(name string) int {
	h.t.Helper()
	i, ok := h.g.Lookup(name)
	if !ok {
		h.t.Fatalf("no task %q", name)
	}
	return i
}

// finish reports a task-level outcome.
func (h *harness) finish(name string, state store.InstanceState, outputs map[string]string) {
	h.t.Helper()
	h.record(h.r.Done(h.idx(name), store.NoItem, state, outputs, ""))
}

func (h *harness) finishItem(name string, item int, state store.InstanceState) {
	h.t.Helper()
	h.record(h.r.Done(h.idx(name), item, state, nil, ""))
}

// states returns every task's state as "name=state", sorted.
func (h *harness) states() map[string]store.InstanceState {
	out := map[string]store.InstanceState{}
	for i, n := range h.g.Nodes {
		out[n.Name] = h.r.State(i)
	}
	return out
}

func (h *harness) want(want map[string]store.InstanceState) {
	h.t.Helper()
	got := h.states()
	sub := map[string]store.InstanceState{}
	for k := range want {
		sub[k] = got[k]
	}
	if diff := cmp.Diff(want, sub); diff != "" {
		h.t.Errorf("states (-want +got):\n%s\nall: %v\ndecisions: %v", diff, got, h.log)
	}
}

func (h *harness) outcome(wantState store.RunState, wantReason string) {
	h.t.Helper()
	over, state, reason := h.r.Outcome()
	if !over {
		h.t.Fatalf("Outcome() = not over, want %s; states %v", wantState, h.states())
	}
	if state != wantState || !strings.Contains(reason, wantReason) {
		h.t.Errorf("Outcome() = %s %q, want %s containing %q", state, reason, wantState, wantReason)
	}
}

const (
	P  = store.InstancePending
	R  = store.InstanceReady
	Ru = store.InstanceRunning
	S  = store.InstanceSucceeded
	F  = store.InstanceFailed
	Sk = store.InstanceSkipped
	B  = store.InstanceBlocked
	C  = store.InstanceCancelled
	L  = store.InstanceLost
)

type step struct {
	task    string
	item    int // -1 for task level
	state   store.InstanceState
	outputs map[string]string
	cancel  string // when set: Cancel(reason) instead of an outcome
	fail    string // when set: Fail(reason)
}

func done(task string, s store.InstanceState) step {
	return step{task: task, item: store.NoItem, state: s}
}
func item(task string, i int, s store.InstanceState) step {
	return step{task: task, item: i, state: s}
}
func out(task string, kv ...string) step {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return step{task: task, item: store.NoItem, state: S, outputs: m}
}

const chain = `
name: chain
tasks:
  - {name: a, run: [x]}
  - {name: b, needs: [a], run: [x]}
  - {name: c, needs: [b], run: [x]}
`

const diamond = `
name: diamond
tasks:
  - {name: a, run: [x]}
  - {name: b, run: [x]}
  - {name: ok, needs: [a], run: [x]}
  - {name: onfail, needs: [{task: a, status: failure}], run: [x]}
  - {name: always, needs: [{task: ok, status: completed}], run: [x]}
`

const staged = `
name: staged
tasks:
  - {name: s1a, stage: 1, run: [x]}
  - {name: s1b, stage: 1, run: [x]}
  - {name: s2, stage: 2, run: [x]}
  - {name: s3, stage: 3, run: [x]}
  - {name: free, run: [x]}
`

const anyJoin = `
name: any
tasks:
  - {name: a, run: [x]}
  - {name: b, run: [x]}
  - {name: x, trigger: any, needs: [a, b], run: [x]}
`

func TestReadiness(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		src        string
		steps      []step
		want       map[string]store.InstanceState
		wantOver   bool
		wantState  store.RunState
		wantReason string
	}{
		{
			name: "roots become ready, dependents wait",
			src:  chain,
			want: map[string]store.InstanceState{"a": R, "b": P, "c": P},
		},
		{
			name:      "chain runs to success",
			src:       chain,
			steps:     []step{done("a", S), done("b", S), done("c", S)},
			want:      map[string]store.InstanceState{"a": S, "b": S, "c": S},
			wantOver:  true,
			wantState: store.RunSucceeded,
		},
		{
			name:       "failure blocks the whole downstream",
			src:        chain,
			steps:      []step{done("a", F)},
			want:       map[string]store.InstanceState{"a": F, "b": B, "c": B},
			wantOver:   true,
			wantState:  store.RunFailed,
			wantReason: `task "a" failed`,
		},
		{
			name:       "a lost task blocks its downstream and fails the run",
			src:        chain,
			steps:      []step{done("a", S), done("b", L)},
			want:       map[string]store.InstanceState{"b": L, "c": B},
			wantOver:   true,
			wantState:  store.RunFailed,
			wantReason: `task "b" was lost`,
		},
		{
			name:  "failure edge runs on failure, success edge blocks, sibling unaffected",
			src:   diamond,
			steps: []step{done("a", F)},
			want:  map[string]store.InstanceState{"b": R, "ok": B, "onfail": R, "always": R},
		},
		{
			name:  "failure edge is a branch not taken on success",
			src:   diamond,
			steps: []step{done("a", S)},
			want:  map[string]store.InstanceState{"ok": R, "onfail": Sk, "always": P},
		},
		{
			name:      "completed edge runs after success",
			src:       diamond,
			steps:     []step{done("a", S), done("b", S), done("ok", S), done("always", S)},
			want:      map[string]store.InstanceState{"onfail": Sk, "always": S},
			wantOver:  true,
			wantState: store.RunSucceeded,
		},
		{
			name:       "completed edge runs after a blocked upstream; run still fails",
			src:        diamond,
			steps:      []step{done("a", F), done("b", S), done("onfail", S), done("always", S)},
			want:       map[string]store.InstanceState{"ok": B, "always": S},
			wantOver:   true,
			wantState:  store.RunFailed,
			wantReason: `task "a" failed`,
		},
		{
			name: "skip propagates down a chain",
			src: `
name: skip
tasks:
  - {name: a, when: 'params.go == "yes"', run: [x]}
  - {name: b, needs: [a], run: [x]}
  - {name: c, needs: [b], run: [x]}
params: {go: "no"}
`,
			want:      map[string]store.InstanceState{"a": Sk, "b": Sk, "c": Sk},
			wantOver:  true,
			wantState: store.RunSucceeded,
		},
		{
			name: "task when true makes it ready",
			src: `
name: when
params: {go: "yes"}
tasks:
  - {name: a, when: 'params.go == "yes"', run: [x]}
`,
			want: map[string]store.InstanceState{"a": R},
		},
		{
			name:  "any join runs as soon as one edge is satisfied",
			src:   anyJoin,
			steps: []step{done("a", S)},
			want:  map[string]store.InstanceState{"b": R, "x": R},
		},
		{
			name:       "any join with every upstream failed is blocked",
			src:        anyJoin,
			steps:      []step{done("a", F), done("b", F)},
			want:       map[string]store.InstanceState{"x": B},
			wantOver:   true,
			wantState:  store.RunFailed,
			wantReason: "failed",
		},
		{
			name: "any join waits while an edge may still be satisfied",
			src:  anyJoin,
			steps: []step{
				done("a", F),
			},
			want: map[string]store.InstanceState{"x": P},
		},
		{
			name: "any join with every upstream skipped is skipped",
			src: `
name: anyskip
params: {p: "n"}
tasks:
  - {name: a, when: 'params.p == "y"', run: [x]}
  - {name: b, when: 'params.p == "y"', run: [x]}
  - {name: x, trigger: any, needs: [a, b], run: [x]}
`,
			want:      map[string]store.InstanceState{"x": Sk},
			wantOver:  true,
			wantState: store.RunSucceeded,
		},
		{
			name: "all join with one skipped and one failed upstream is blocked",
			src: `
name: mix
params: {p: "n"}
tasks:
  - {name: a, when: 'params.p == "y"', run: [x]}
  - {name: b, run: [x]}
  - {name: x, needs: [a, b], run: [x]}
`,
			steps: []step{done("b", F)},
			want:  map[string]store.InstanceState{"a": Sk, "x": B},
		},
		{
			name: "stage waits for every task of the previous stage",
			src:  staged,
			steps: []step{
				done("s1a", S),
			},
			want: map[string]store.InstanceState{"s1a": S, "s1b": R, "s2": P, "s3": P, "free": R},
		},
		{
			name:  "stage starts once the previous stage is done",
			src:   staged,
			steps: []step{done("s1a", S), done("s1b", S)},
			want:  map[string]store.InstanceState{"s2": R, "s3": P},
		},
		{
			name:  "stage 3 waits for stage 2, the nearest lower stage",
			src:   staged,
			steps: []step{done("s1a", S), done("s1b", S), done("s2", S)},
			want:  map[string]store.InstanceState{"s3": R},
		},
		{
			name:       "a failed stage blocks every later stage",
			src:        staged,
			steps:      []step{done("s1a", F), done("s1b", S), done("free", S)},
			want:       map[string]store.InstanceState{"s2": B, "s3": B},
			wantOver:   true,
			wantState:  store.RunFailed,
			wantReason: `task "s1a" failed`,
		},
		{
			name: "a skipped task does not hold the next stage back",
			src: `
name: stageskip
params: {full: "no"}
tasks:
  - {name: a, stage: 1, when: 'params.full == "yes"', run: [x]}
  - {name: b, stage: 1, run: [x]}
  - {name: c, stage: 2, run: [x]}
`,
			steps: []step{done("b", S)},
			want:  map[string]store.InstanceState{"a": Sk, "c": R},
		},
		{
			name: "stage and own needs are both required",
			src: `
name: stageneeds
tasks:
  - {name: pre, run: [x]}
  - {name: a, stage: 1, run: [x]}
  - {name: b, stage: 2, needs: [pre], run: [x]}
`,
			steps: []step{done("a", S)},
			want:  map[string]store.InstanceState{"pre": R, "b": P},
		},
		{
			name: "trigger any does not loosen the stage dependency",
			src: `
name: stageany
tasks:
  - {name: a, stage: 1, run: [x]}
  - {name: p, run: [x]}
  - {name: q, run: [x]}
  - {name: b, stage: 2, trigger: any, needs: [p, q], run: [x]}
`,
			steps: []step{done("p", S)},
			want:  map[string]store.InstanceState{"a": R, "b": P},
		},
		{
			name: "allowed failure skips its success downstream and the run succeeds",
			src: `
name: allow
tasks:
  - {name: a, allow_failure: true, run: [x]}
  - {name: b, needs: [a], run: [x]}
  - {name: h, needs: [{task: a, status: failure}], run: [x]}
`,
			steps:     []step{done("a", F), done("h", S)},
			want:      map[string]store.InstanceState{"b": Sk, "h": S},
			wantOver:  true,
			wantState: store.RunSucceeded,
		},
		{
			name: "on_failure cancel_run stops what has not started",
			src: `
name: failfast
tasks:
  - {name: a, on_failure: cancel_run, run: [x]}
  - {name: b, run: [x]}
  - {name: c, needs: [b], run: [x]}
`,
			steps:      []step{done("a", F)},
			want:       map[string]store.InstanceState{"a": F, "b": C, "c": C},
			wantOver:   true,
			wantState:  store.RunFailed,
			wantReason: "cancel_run",
		},
		{
			name:       "cancel stops pending work and the run ends cancelled once in-flight work reports",
			src:        chain,
			steps:      []step{{task: "", cancel: "by request"}, done("a", C)},
			want:       map[string]store.InstanceState{"a": C, "b": C, "c": C},
			wantOver:   true,
			wantState:  store.RunCancelled,
			wantReason: "by request",
		},
		{
			name:       "run timeout fails the run",
			src:        chain,
			steps:      []step{done("a", S), {fail: "run timeout of 1h0m0s exceeded"}, done("b", C)},
			want:       map[string]store.InstanceState{"b": C, "c": C},
			wantOver:   true,
			wantState:  store.RunFailed,
			wantReason: "run timeout",
		},
		{
			name: "edge when branches on an upstream output",
			src: `
name: branch
tasks:
  - {name: count, run: [x]}
  - name: empty
    needs: [{task: count, when: 'int(tasks["count"].outputs.RowCount) == 0'}]
    run: [x]
  - name: load
    needs: [{task: count, when: 'int(tasks["count"].outputs.RowCount) > 0'}]
    run: [x]
`,
			steps: []step{out("count", "RowCount", "7")},
			want:  map[string]store.InstanceState{"empty": Sk, "load": R},
		},
		{
			name: "task when reads upstream outputs",
			src: `
name: branch2
tasks:
  - {name: count, run: [x]}
  - name: empty
    needs: [count]
    when: 'int(tasks["count"].outputs.RowCount) == 0'
    run: [x]
`,
			steps: []step{out("count", "RowCount", "0")},
			want:  map[string]store.InstanceState{"empty": R},
		},
		{
			name: "an expression that fails at run time fails its task",
			src: `
name: badexpr
tasks:
  - {name: count, run: [x]}
  - name: next
    needs: [count]
    when: 'int(tasks["count"].outputs.RowCount) == 0'
    run: [x]
  - {name: after, needs: [next], run: [x]}
`,
			steps:      []step{out("count", "RowCount", "many")},
			want:       map[string]store.InstanceState{"next": F, "after": B},
			wantOver:   true,
			wantState:  store.RunFailed,
			wantReason: `task "next" failed`,
		},
		{
			name:  "a repeated outcome is ignored",
			src:   chain,
			steps: []step{done("a", S), done("a", F)},
			want:  map[string]store.InstanceState{"a": S, "b": R},
		},
		{
			name: "for-each with no items succeeds at once",
			src: `
name: empty
params: {list: "[]"}
tasks:
  - {name: fe, for_each: {param: list}, run: [x]}
  - {name: after, needs: [fe], run: [x]}
`,
			want: map[string]store.InstanceState{"fe": S, "after": R},
		},
		{
			name: "for-each expands, and a failed item fails the task without stopping the others",
			src: `
name: fe
tasks:
  - {name: fe, for_each: {items: [a, b, c]}, run: [x]}
  - {name: after, needs: [fe], run: [x]}
  - {name: cleanup, needs: [{task: fe, status: completed}], run: [x]}
`,
			steps:      []step{item("fe", 0, S), item("fe", 1, F), item("fe", 2, S)},
			want:       map[string]store.InstanceState{"fe": F, "after": B, "cleanup": R},
			wantOver:   false,
			wantState:  store.RunFailed,
			wantReason: "",
		},
		{
			name: "for-each over an upstream JSON list",
			src: `
name: fefrom
tasks:
  - {name: list, run: [x]}
  - {name: fe, needs: [list], for_each: {from: 'tasks["list"].outputs.ClientIds'}, run: [x]}
`,
			steps: []step{out("list", "ClientIds", `[10, 20]`), item("fe", 0, S), item("fe", 1, S)},
			want:  map[string]store.InstanceState{"fe": S},
		},
		{
			name: "cancel cancels for-each items that have not started",
			src: `
name: fecancel
tasks:
  - {name: fe, for_each: {items: [a, b, c]}, run: [x]}
`,
			steps:     []step{item("fe", 0, S), {cancel: "stop"}},
			want:      map[string]store.InstanceState{"fe": C},
			wantOver:  true,
			wantState: store.RunCancelled,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, tc.src)
			for _, s := range tc.steps {
				switch {
				case s.cancel != "":
					h.record(h.r.Cancel(s.cancel))
				case s.fail != "":
					h.record(h.r.Fail(s.fail))
				case s.item != store.NoItem:
					h.finishItem(s.task, s.item, s.state)
				default:
					h.finish(s.task, s.state, s.outputs)
				}
			}
			h.want(tc.want)
			if tc.wantOver {
				h.outcome(tc.wantState, tc.wantReason)
			}
		})
	}
}

func TestForEachExpansion(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `
name: fe
tasks:
  - {name: fe, for_each: {items: [a, b, c]}, run: [echo, '${{ item }}']}
`)
	var expanded *Change
	g := h.g
	r, _ := NewRun(g, nil, nil)
	for _, c := range r.Start() {
		if c.Items != nil {
			expanded = &c
		}
	}
	if expanded == nil {
		t.Fatalf("Start() made no expansion; decisions %v", h.log)
	}
	var texts []string
	for _, it := range expanded.Items {
		texts = append(texts, it.Text)
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, texts); diff != "" {
		t.Errorf("items (-want +got):\n%s", diff)
	}
	if got := r.State(0); got != Ru {
		t.Errorf("State(fe) = %s, want running", got)
	}
	for k := range 3 {
		if got := r.ItemState(0, k); got != R {
			t.Errorf("ItemState(fe, %d) = %s, want ready", k, got)
		}
	}
}

// TestReload checks that a run rebuilt from stored states decides exactly
// what the live run decided.
func TestReload(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		src   string
		insts []Instance
		want  map[string]store.InstanceState
		over  bool
	}{
		{
			name: "done upstream resolves pending downstream",
			src:  chain,
			insts: []Instance{
				{Task: "a", Item: store.NoItem, State: S}, {Task: "b", Item: store.NoItem, State: P},
				{Task: "c", Item: store.NoItem, State: P},
			},
			want: map[string]store.InstanceState{"a": S, "b": R, "c": P},
		},
		{
			name: "stored blocked and failed states stay and the run is over",
			src:  chain,
			insts: []Instance{
				{Task: "a", Item: store.NoItem, State: F}, {Task: "b", Item: store.NoItem, State: B},
				{Task: "c", Item: store.NoItem, State: B},
			},
			want: map[string]store.InstanceState{"a": F, "b": B, "c": B},
			over: true,
		},
		{
			name: "in-flight work keeps the run open",
			src:  staged,
			insts: []Instance{
				{Task: "s1a", Item: store.NoItem, State: S}, {Task: "s1b", Item: store.NoItem, State: Ru},
				{Task: "s2", Item: store.NoItem, State: P}, {Task: "s3", Item: store.NoItem, State: P},
				{Task: "free", Item: store.NoItem, State: S},
			},
			want: map[string]store.InstanceState{"s2": P, "s3": P},
		},
		{
			name: "a for-each task with items in flight stays running",
			src: `
name: fe
tasks:
  - {name: fe, for_each: {items: [a, b]}, run: [x]}
  - {name: after, needs: [fe], run: [x]}
`,
			insts: []Instance{
				{Task: "fe", Item: store.NoItem, State: Ru},
				{Task: "fe", Item: 0, State: S}, {Task: "fe", Item: 1, State: store.InstanceDispatched},
				{Task: "after", Item: store.NoItem, State: P},
			},
			want: map[string]store.InstanceState{"fe": Ru, "after": P},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, tc.src, tc.insts...)
			h.want(tc.want)
			if over, _, _ := h.r.Outcome(); over != tc.over {
				t.Errorf("Outcome() over = %v, want %v", over, tc.over)
			}
		})
	}
}

func TestReloadedForEachFinishes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, `
name: fe
tasks:
  - {name: fe, for_each: {items: [a, b]}, run: [x]}
  - {name: after, needs: [fe], run: [x]}
`, Instance{Task: "fe", Item: store.NoItem, State: Ru},
		Instance{Task: "fe", Item: 0, State: S}, Instance{Task: "fe", Item: 1, State: Ru},
		Instance{Task: "after", Item: store.NoItem, State: P})
	h.finishItem("fe", 1, S)
	h.want(map[string]store.InstanceState{"fe": S, "after": R})
}

func TestCompileRejectsStageCycle(t *testing.T) {
	t.Parallel()
	spec := &job.Spec{Name: "cyc", Tasks: []*job.Task{
		{Name: "a", Stage: 1, Needs: []job.Edge{{Task: "b"}}, Run: []string{"x"}},
		{Name: "b", Stage: 2, Run: []string{"x"}},
	}}
	if _, err := Compile(spec); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("Compile(stage cycle) = %v, want a cycle error", err)
	}
}

func TestTopo(t *testing.T) {
	t.Parallel()
	g := compileYAML(t, staged)
	pos := map[string]int{}
	for i, n := range g.Topo() {
		pos[g.Nodes[n].Name] = i
	}
	for _, pair := range [][2]string{{"s1a", "s2"}, {"s1b", "s2"}, {"s2", "s3"}} {
		if pos[pair[0]] > pos[pair[1]] {
			t.Errorf("Topo() puts %s after %s: %v", pair[0], pair[1], pos)
		}
	}
	if len(pos) != len(g.Nodes) {
		t.Errorf("Topo() has %d nodes, want %d", len(pos), len(g.Nodes))
	}
}
