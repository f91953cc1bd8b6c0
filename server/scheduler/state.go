package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// runRT is an active run in memory.
type runRT struct {
	run   *store.Run
	g     *engine.Graph
	eng   *engine.Run
	rem   []time.Duration
	tasks []*taskRT
	// inflight counts instances dispatched or running.
	inflight int
	maxPar   int
	// parked holds ready instances held back by the job's max_parallel.
	parked instHeap
	// finishing is set once the run's final transition is written.
	finishing bool
}

// taskRT is one task of an active run.
type taskRT struct {
	node *engine.Node
	inst *instRT // the task-level instance
	// items are a for-each task's item instances, by item index.
	items []*instRT
	// inflight counts items dispatched or running; cap bounds it
	// (for_each max_parallel; 0 means no bound).
	inflight int
	cap      int
	parked   instHeap
}

// instRT is a task instance in memory.
type instRT struct {
	id        int64
	run       *runRT
	task      int
	item      int
	itemValue string // JSON of the for-each item
	// stored is the instance's state as the store holds it once the
	// current batch commits: what its next write is guarded by. Where the
	// instance stands now is the engine's (Run.State, Run.ItemState): a
	// move to ready or to running is written later or not at all (see
	// writeReady and Scheduler.started).
	stored    store.InstanceState
	attempts  int
	attemptID int64
	failures  int
	losses    int
	// kind is what the next attempt will be.
	kind store.AttemptKind
	// live is the instance's attempt on an agent, if any.
	live *attemptRT
	// agent ran the latest attempt.
	agent string
	// queued is true while the instance sits in a ready queue.
	queued bool
	seq    uint64
	hidx   int
}

// attemptRT is a live attempt.
type attemptRT struct {
	id    int64
	inst  *instRT
	agent *agentRT
	no    int
	state store.AttemptState
	start *dispatch.Start
	// startedAt is when the child started (see Scheduler.started).
	startedAt time.Time
	// logged counts the output bytes stored so far.
	logged     int64
	cancelSent bool
	// renewedAt is when the attempt's lease was last renewed (dispatched,
	// re-attached or renewed by a heartbeat of its agent). The agent stops
	// the child AgentTimeout after it sent the renewing message; the
	// attempt is lost lostAfter past renewedAt.
	renewedAt time.Time
}

// prepared is what loading a run needs besides its rows, read from the
// store off the loop (by the API call that hands the run over), so the
// loop reads nothing in the steady state.
type prepared struct {
	g *engine.Graph
	// durs are the job's recent task durations, for longest-path-first.
	durs map[string]time.Duration
}

// queuedRun is a run waiting for its job's active run to end.
type queuedRun struct {
	run   *store.Run
	insts []*store.Instance
	prep  *prepared
}

// prepare reads what loading run needs: its job version's compiled graph
// (from the shared cache when there) and the job's task durations. It
// must not run on the loop.
func (s *Scheduler) prepare(ctx context.Context, run *store.Run) (*prepared, error) {
	g, ok := s.cfg.Graphs.Lookup(run.JobID, run.JobVersion)
	if !ok {
		j, err := s.st.JobGet(ctx, &store.JobGetParams{ID: run.JobID, Version: run.JobVersion})
		if err != nil {
			return nil, fmt.Errorf("load job %d version %d: %w", run.JobID, run.JobVersion, err)
		}
		if g, err = s.cfg.Graphs.Get(j); err != nil {
			return nil, fmt.Errorf("decode job %q version %d: %w", j.Name, run.JobVersion, err)
		}
	}
	durs, err := s.st.TaskDurations(ctx, &store.TaskDurationsParams{JobName: run.JobName})
	if err != nil {
		// Ordering falls back to defaults; the run is not held up for it.
		s.log.WarnContext(ctx, "no task durations; ordering by defaults", slog.String("job", run.JobName), slog.Any("error", err))
	}
	return &prepared{g: g, durs: durs}, nil
}

func (r *runRT) taskName(t int) string { return r.g.Nodes[t].Name }

// now returns where the instance stands: the engine's state of it.
func (in *instRT) now() store.InstanceState {
	if in.item == store.NoItem {
		return in.run.eng.State(in.task)
	}
	return in.run.eng.ItemState(in.task, in.item)
}

// instance returns the in-memory instance of (task, item), or nil.
func (r *runRT) instance(task, item int) *instRT {
	t := r.tasks[task]
	if item == store.NoItem {
		return t.inst
	}
	if item < 0 || item >= len(t.items) {
		return nil
	}
	return t.items[item]
}

// itemVars returns the expression variables for one instance.
func (r *runRT) itemVars(in *instRT) (*job.Vars, error) {
	v := *r.eng.Vars()
	if in.item != store.NoItem {
		// UseNumber keeps large integer ids exact.
		dec := json.NewDecoder(strings.NewReader(in.itemValue))
		dec.UseNumber()
		var val any
		if err := dec.Decode(&val); err != nil {
			return nil, fmt.Errorf("item %d: stored value is not JSON: %w", in.item, err)
		}
		v.Item = val
		v.Index = in.item
	}
	return &v, nil
}

// itemText is the BATON_ITEM form of an item value: strings as they are,
// anything else as JSON.
func itemText(jsonValue string) string {
	var s string
	if json.Unmarshal([]byte(jsonValue), &s) == nil {
		return s
	}
	return jsonValue
}

// instHeap orders ready instances by engine.Key.
type instHeap []*instRT

func (h instHeap) Len() int { return len(h) }
func (h instHeap) Less(i, j int) bool {
	return keyOf(h[i]).Less(keyOf(h[j]))
}
func (h instHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].hidx = i; h[j].hidx = j }
func (h *instHeap) Push(x any)   { in := x.(*instRT); in.hidx = len(*h); *h = append(*h, in) }
func (h *instHeap) Pop() any {
	old := *h
	in := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return in
}

func keyOf(in *instRT) engine.Key {
	return engine.Key{
		Priority:  in.run.g.Nodes[in.task].Task.Priority,
		Remaining: in.run.rem[in.task],
		Seq:       in.seq,
	}
}
