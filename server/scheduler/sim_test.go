package scheduler

// A deterministic simulation of batond's scheduler, in the spirit of the
// simulators of FoundationDB and TigerBeetle: the real scheduler loop and
// engine over a real SQLite store in a temp dir, driven step by step by one
// goroutine, with simulated agents and one clock that both the store and the
// scheduler read. Every choice comes from one seed, so a failing seed
// replays exactly. The simulation injects the faults a control plane meets:
// agents that disconnect and reconnect (with the same process or a new one,
// listing what they still run and the outcomes not yet acknowledged),
// agents cut off by a partition (their runner keeps the children until the
// attempts' leases run out, then stops them), duplicate and late outcomes,
// a batond that restarts from the store at any step, a leader that is
// deposed, and cancel and restart requests at any moment. After every step
// it checks the invariants listed at checkInvariants.
//
// Run more seeds with `make sim SEEDS=100000`; replay one with
// `go test ./server/scheduler -run TestSim -seed=N -v`.

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlite"
)

var (
	flagSeed  = flag.Int64("seed", -1, "TestSim: run only this seed")
	flagSeeds = flag.Int("seeds", 0, "TestSim: how many seeds to run (default 2000; 40 under the race detector)")
	flagFirst = flag.Int64("first-seed", 1, "TestSim: the first seed of the range")
	flagSteps = flag.Int("steps", 100, "TestSim: random steps per seed before the simulation lets every run finish")
)

const (
	simAgentTimeout = 10 * time.Second
	simKillGrace    = 2 * time.Second
)

// TestSim runs the simulation for many seeds. A failure names its seed and
// the command that replays it.
func TestSim(t *testing.T) {
	t.Parallel()
	if *flagSeed >= 0 {
		runSeed(t, *flagSeed)
		return
	}
	n := *flagSeeds
	if n == 0 {
		n = 2000
		if raceEnabled {
			n = 40 // make test runs the 2000 without the race detector too
		}
	}
	// Two workers: the machine's cores.
	const workers = 2
	var next atomic.Int64
	next.Store(*flagFirst)
	last := *flagFirst + int64(n)
	for w := range workers {
		t.Run(fmt.Sprintf("worker%d", w), func(t *testing.T) {
			t.Parallel()
			for {
				seed := next.Add(1) - 1
				if seed >= last || t.Failed() {
					return
				}
				runSeed(t, seed)
			}
		})
	}
}

// fakeClock is the simulation's time. Only the simulating goroutine moves
// it; the store reads it from the same goroutine.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

type sim struct {
	t    *testing.T
	seed int64
	rng  *rand.Rand
	clk  *fakeClock
	ctx  context.Context
	dir  string
	st   store.Store
	raw  *sql.DB // the same file, read by the checker
	// qRuns, qInsts and qAtts are the checker's statements on raw.
	qRuns, qInsts, qAtts, qVersion *sql.Stmt
	// snap is the last snapshot, at store data version snapVersion.
	snap        *snapshot
	snapVersion int64
	s           *Scheduler
	lead        string // the holder of the current scheduler
	job         *store.Job
	g           *engine.Graph
	ags         []*simAgent
	runs        []int64
	// execs are every child the agents ran, by task instance.
	execs map[string][]*child
	// acked are the outcomes the control plane acknowledged, by attempt.
	acked map[int64]dispatch.Outcome
	// cancelled holds, for a run whose cancel was accepted, its restart
	// generation then and the attempts it had: no other may start in that
	// generation.
	cancelled map[int64]cancelMark
	// kept holds, for a run restarted from failure, the succeeded
	// instances the restart must keep, with their deciding attempts.
	kept  map[int64]map[int64]int64
	trace []string
	step  int
}

type cancelMark struct {
	restart  int
	attempts map[int64]bool
}

type simAgent struct {
	sim  *sim
	name string
	// windows: the agent says it runs on Windows, where it runs its
	// children itself; batond then replaces none of its lost attempts by
	// default. Cut off here means a partition: its process runs and fences
	// on time. (A stopped Windows agent process fences nothing until it
	// resumes; an operator's restart could then overlap the child: see
	// docs/operations.md.)
	windows bool
	slots   int
	boot    int
	sess    *dispatch.Session
	seq     uint64
	sent    map[uint64]time.Time // when each message of the session was sent
	lease   time.Duration
	frozen  time.Time // cut off until then
	retryAt time.Time // reconnect not before then
	started map[int64]bool
	running map[int64]*child
	unacked map[int64]*dispatch.Finished
}

// child is one execution of an attempt on an agent.
type child struct {
	attempt    int64
	key        string
	agent      string
	start, end time.Time // end is zero while it runs
	plannedEnd time.Time
	outcome    dispatch.Outcome
	deadline   time.Time // the lease; zero: none
	stopAt     time.Time // cancelled or fenced: it ends then
	stopWith   dispatch.Outcome
	announced  bool
}

func runSeed(t *testing.T, seed int64) {
	t.Helper()
	sm := newSim(t, seed)
	defer sm.close()
	defer func() {
		if !t.Failed() && *flagSeed >= 0 && testing.Verbose() {
			for _, l := range sm.trace {
				t.Log(l)
			}
		}
		if t.Failed() {
			t.Logf("seed %d failed at step %d; replay: go test ./server/scheduler -run 'TestSim$' -seed=%d -v", seed, sm.step, seed)
			for _, l := range sm.trace[max(0, len(sm.trace)-60):] {
				t.Log(l)
			}
		}
	}()
	for sm.step = 0; sm.step < *flagSteps && !t.Failed(); sm.step++ {
		sm.randomStep()
		sm.checkInvariants()
	}
	if !t.Failed() {
		sm.finish()
	}
}

func (sm *sim) fatalf(format string, args ...any) {
	sm.t.Helper()
	sm.t.Fatalf("seed %d step %d: %s\nreplay: go test ./server/scheduler -run 'TestSim$' -seed=%d -v",
		sm.seed, sm.step, fmt.Sprintf(format, args...), sm.seed)
}

func (sm *sim) logf(format string, args ...any) {
	sm.trace = append(sm.trace, fmt.Sprintf("[%d %s] ", sm.step, sm.clk.now().Format("15:04:05.000"))+fmt.Sprintf(format, args...))
}

func newSim(t *testing.T, seed int64) *sim {
	t.Helper()
	sm := &sim{
		t: t, seed: seed, rng: rand.New(rand.NewPCG(uint64(seed), 0x5eed)), clk: &fakeClock{},
		ctx: context.Background(), execs: map[string][]*child{}, acked: map[int64]dispatch.Outcome{},
		cancelled: map[int64]cancelMark{}, kept: map[int64]map[int64]int64{},
	}
	sm.clk.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	sm.dir = simDir(t)
	path := filepath.Join(sm.dir, fmt.Sprintf("sim%d.db", seed))
	// A copy of one freshly migrated database: migrating anew for every
	// seed would cost more than most seeds.
	if err := os.WriteFile(path, migratedDB(t), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(sm.ctx, sqlite.Config{Path: path, Logger: slog.New(slog.DiscardHandler), Clock: sm.clk.now})
	if err != nil {
		t.Fatal(err)
	}
	sm.st = st
	if err := st.Migrate(sm.ctx); err != nil { // a no-op: checks the version
		t.Fatal(err)
	}
	sm.raw, err = sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	sm.raw.SetMaxOpenConns(1)
	for _, q := range []struct {
		stmt **sql.Stmt
		text string
	}{
		{&sm.qRuns, `SELECT id, state, restart_count, error, started_at, restarted_at FROM runs`},
		{&sm.qInsts, `SELECT id, run_id, task, item, state, coalesce(attempt_id, 0) FROM task_instances ORDER BY id`},
		{&sm.qAtts, `SELECT id, instance_id, run_id, task, run_restart, state, late_state FROM attempts ORDER BY id`},
		{&sm.qVersion, `PRAGMA data_version`},
	} {
		if *q.stmt, err = sm.raw.PrepareContext(sm.ctx, q.text); err != nil {
			t.Fatal(err)
		}
	}
	src := sm.randomJob()
	sm.job = applyJob(t, st, src)
	sm.logf("job:\n%s", src)
	sm.lead = "sim"
	sm.takeOver()
	sm.g, err = sm.s.cfg.Graphs.Get(sm.job)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 + sm.rng.IntN(2) {
		sm.ags = append(sm.ags, &simAgent{sim: sm, name: fmt.Sprintf("a%d", i), slots: 1 + sm.rng.IntN(3), windows: sm.rng.IntN(3) == 0,
			started: map[int64]bool{}, running: map[int64]*child{}, unacked: map[int64]*dispatch.Finished{}})
	}
	for _, a := range sm.ags {
		a.connect()
	}
	sm.stepScheduler()
	sm.newRun()
	return sm
}

var (
	migratedOnce  sync.Once
	migratedBytes []byte
	migratedErr   error
)

// migratedDB returns the bytes of a freshly migrated, checkpointed store.
func migratedDB(t *testing.T) []byte {
	migratedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "baton-sim-template-")
		if err != nil {
			migratedErr = err
			return
		}
		defer func() { _ = os.RemoveAll(dir) }() // a temp dir; nothing depends on it
		path := filepath.Join(dir, "template.db")
		st, err := sqlite.Open(context.Background(), sqlite.Config{Path: path, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			migratedErr = err
			return
		}
		migratedErr = st.Migrate(context.Background())
		// Closing checkpoints the WAL into the file.
		if err := st.Close(); migratedErr == nil {
			migratedErr = err
		}
		if migratedErr == nil {
			migratedBytes, migratedErr = os.ReadFile(path)
		}
	})
	if migratedErr != nil {
		t.Fatal(migratedErr)
	}
	return migratedBytes
}

// simDir returns a temp dir for a seed's store, in memory (/dev/shm) where
// the machine has it: the store is real SQLite with its WAL, only its disk
// is fast.
func simDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/dev/shm", "baton-sim-")
	if err != nil {
		return t.TempDir()
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (sm *sim) close() {
	if sm.s != nil {
		sm.s.shutdown()
	}
	if sm.raw != nil {
		_ = sm.raw.Close()
	}
	if c, ok := sm.st.(interface{ Close() error }); ok {
		_ = c.Close()
	}
}

// randomJob writes a job of 3 to 7 tasks: random needs edges of every
// status, sometimes stages, one for-each task, retries, allowed failures,
// tasks that are not retried after a loss, and sometimes a run timeout.
func (sm *sim) randomJob() string {
	r := sm.rng
	var b strings.Builder
	fmt.Fprintf(&b, "name: sim%d\n", sm.seed)
	if r.IntN(3) == 0 {
		fmt.Fprintf(&b, "max_parallel: %d\n", 1+r.IntN(3))
	}
	if r.IntN(4) == 0 {
		fmt.Fprintf(&b, "timeout: %ds\n", 20+r.IntN(100))
	}
	overlap := []string{"forbid", "queue", "allow"}[r.IntN(3)]
	fmt.Fprintf(&b, "overlap: %s\ntasks:\n", overlap)
	n := 3 + r.IntN(5)
	staged := r.IntN(4) == 0
	forEach := r.IntN(n + 1) // n: none
	for i := range n {
		fmt.Fprintf(&b, "  - name: t%d\n    run: [x]\n", i)
		if staged {
			fmt.Fprintf(&b, "    stage: %d\n", 1+i/2)
		} else if i > 0 {
			var needs []string
			for j := range i {
				if r.IntN(3) == 0 || (j == i-1 && len(needs) == 0 && r.IntN(2) == 0) {
					status := []string{"success", "success", "success", "completed", "failure"}[r.IntN(5)]
					needs = append(needs, fmt.Sprintf("{task: t%d, status: %s}", j, status))
				}
			}
			if len(needs) > 0 {
				fmt.Fprintf(&b, "    needs: [%s]\n", strings.Join(needs, ", "))
			}
		}
		if r.IntN(2) == 0 {
			fmt.Fprintf(&b, "    retries: %d\n    retry_delay: %ds\n", 1+r.IntN(2), 1+r.IntN(5))
		}
		if r.IntN(8) == 0 {
			b.WriteString("    allow_failure: true\n")
		}
		if r.IntN(5) == 0 {
			b.WriteString("    retry_on_lost: false\n")
		}
		if i == forEach {
			items := make([]string, 2+r.IntN(4))
			for k := range items {
				items[k] = fmt.Sprintf("i%d", k)
			}
			fmt.Fprintf(&b, "    for_each: {items: [%s]}\n", strings.Join(items, ", "))
			if r.IntN(2) == 0 {
				fmt.Fprintf(&b, "    max_parallel: %d\n", 1+r.IntN(2))
			}
		}
	}
	return b.String()
}

// takeOver starts a scheduler that takes the leader lease and loads every
// active run from the store, as batond does at start or after a failover.
func (sm *sim) takeOver() {
	s, err := New(Config{Store: sm.st, Logger: slog.New(slog.DiscardHandler), Holder: sm.lead,
		AgentTimeout: simAgentTimeout, KillGrace: simKillGrace, LeaseTTL: time.Minute, Clock: sm.clk.now})
	if err != nil {
		sm.t.Fatal(err)
	}
	s.ctx = sm.ctx
	lease, err := sm.st.LeaderAcquire(sm.ctx, &store.LeaderAcquireParams{Name: leaseName, Holder: sm.lead, TTL: time.Minute})
	if err != nil {
		sm.fatalf("take the leader lease: %v", err)
	}
	s.lease = lease
	s.token.Store(lease.Token)
	s.leader.Store(true)
	if err := s.recover(sm.ctx); err != nil {
		sm.fatalf("recover: %v", err)
	}
	sm.s = s
}

// stepScheduler runs one loop iteration, as the loop does after its first
// input or timer.
func (sm *sim) stepScheduler() {
	// The loop does not wait while inputs its effects produced are
	// pending: it applies them in the next iteration at once.
	for i := 0; i == 0 || len(sm.s.local) > 0; i++ {
		if err := sm.s.step(sm.ctx); err != nil {
			if errors.Is(err, store.ErrNotLeader) {
				sm.logf("scheduler deposed: %v", err)
				sm.failOver()
				return
			}
			sm.fatalf("scheduler step: %v", err)
		}
	}
}

// failOver ends the current scheduler (its memory is gone, its sessions
// close) and starts another on the store.
func (sm *sim) failOver() {
	sm.s.shutdown()
	sm.s = nil
	sm.takeOver()
}

func (sm *sim) send(a *simAgent, msg any) {
	sm.s.in <- messageInput{sess: a.sess, msg: msg}
}

func (sm *sim) randomStep() {
	r := sm.rng
	switch w := r.IntN(100); {
	case w < 30:
		d := time.Duration(r.Int64N(int64(3 * time.Second)))
		sm.clk.advance(d)
		sm.logf("advance %v", d)
	case w < 60:
		a := sm.ags[r.IntN(len(sm.ags))]
		a.deliver()
	case w < 75:
		sm.ags[r.IntN(len(sm.ags))].heartbeat()
	case w < 78:
		a := sm.ags[r.IntN(len(sm.ags))]
		a.disconnect(r.IntN(2) == 0)
	case w < 81:
		a := sm.ags[r.IntN(len(sm.ags))]
		if a.frozen.IsZero() {
			d := time.Duration(2+r.IntN(40)) * time.Second
			a.frozen = sm.clk.now().Add(d)
			sm.logf("%s cut off for %v", a.name, d)
		}
	case w < 84:
		sm.ags[r.IntN(len(sm.ags))].resendOutcome()
	case w < 86:
		sm.logf("batond restarts")
		sm.s.shutdown()
		sm.takeOver()
	case w < 87:
		sm.depose()
	case w < 90:
		if len(sm.runs) > 0 {
			sm.cancel(sm.runs[r.IntN(len(sm.runs))])
		}
	case w < 95:
		if len(sm.runs) > 0 {
			sm.restart(sm.runs[r.IntN(len(sm.runs))])
		}
	default:
		if len(sm.runs) < 3 {
			sm.newRun()
		}
	}
	for _, a := range sm.ags {
		a.tick()
	}
	sm.stepScheduler()
	// What the step sent reaches connected agents soon; deliver half the
	// time so messages also wait.
	if r.IntN(2) == 0 {
		for _, a := range sm.ags {
			a.deliver()
		}
		sm.stepScheduler()
	}
}

// depose has another process take the leader lease: the scheduler's next
// write fails, and a new scheduler takes over.
func (sm *sim) depose() {
	ctx := sm.ctx
	sm.logf("leader deposed")
	if err := sm.st.LeaderRelease(ctx, &store.LeaderReleaseParams{Name: leaseName, Holder: sm.lead, Token: sm.s.lease.Token}); err != nil {
		sm.fatalf("release: %v", err)
	}
	thief, err := sm.st.LeaderAcquire(ctx, &store.LeaderAcquireParams{Name: leaseName, Holder: "thief", TTL: time.Minute})
	if err != nil {
		sm.fatalf("thief: %v", err)
	}
	// The deposed scheduler notices at its next renewal at the latest.
	if err := sm.s.renew(); !errors.Is(err, store.ErrNotLeader) {
		sm.fatalf("renew after the lease was taken = %v, want ErrNotLeader", err)
	}
	if err := sm.st.LeaderRelease(ctx, &store.LeaderReleaseParams{Name: leaseName, Holder: "thief", Token: thief.Token}); err != nil {
		sm.fatalf("thief release: %v", err)
	}
	if sm.lead == "sim" {
		sm.lead = "sim2"
	} else {
		sm.lead = "sim"
	}
	sm.failOver()
}

func (sm *sim) newRun() {
	ctx := sm.ctx
	j := sm.job
	insts := make([]store.InstanceInit, len(sm.g.Nodes))
	for i, n := range sm.g.Nodes {
		insts[i] = store.InstanceInit{Task: n.Name, Item: store.NoItem, State: store.InstancePending}
	}
	overlap := store.Overlap(sm.g.Spec.Overlap)
	res, err := sm.st.RunCreate(ctx, &store.RunCreateParams{JobID: j.ID, JobName: j.Name, JobVersion: j.Version,
		Overlap: overlap, Instances: insts})
	if errors.Is(err, store.ErrAlreadyActive) {
		sm.logf("new run refused: %v", err)
		return
	}
	if err != nil {
		sm.fatalf("RunCreate: %v", err)
	}
	list, err := sm.st.InstanceList(ctx, &store.InstanceListParams{RunID: res.Run.ID})
	if err != nil {
		sm.fatalf("InstanceList: %v", err)
	}
	sm.s.in <- sm.s.runInput(ctx, res.Run, list, make(chan error, 1))
	sm.runs = append(sm.runs, res.Run.ID)
	sm.logf("run %d created (%s)", res.Run.ID, res.Run.State)
}

func (sm *sim) cancel(id int64) {
	reply := make(chan error, 1)
	sm.s.in <- cancelInput{id: id, reason: "sim cancel", reply: reply}
	sm.stepScheduler()
	var err error
	select {
	case err = <-reply:
	case <-time.After(10 * time.Second):
		sm.fatalf("cancel of run %d never answered", id)
	}
	sm.logf("cancel run %d: %v", id, err)
	if err != nil {
		return
	}
	run, err := sm.st.RunGet(sm.ctx, &store.RunGetParams{ID: id})
	if err != nil {
		sm.fatalf("RunGet: %v", err)
	}
	atts, err := sm.st.AttemptList(sm.ctx, &store.AttemptListParams{RunID: id})
	if err != nil {
		sm.fatalf("AttemptList: %v", err)
	}
	m := cancelMark{restart: run.RestartCount, attempts: map[int64]bool{}}
	for _, a := range atts {
		m.attempts[a.ID] = true
	}
	sm.cancelled[id] = m
}

func (sm *sim) restart(id int64) {
	ctx := sm.ctx
	before, err := sm.st.InstanceList(ctx, &store.InstanceListParams{RunID: id})
	if err != nil {
		sm.fatalf("InstanceList: %v", err)
	}
	mode := engine.RestartFailed
	from := ""
	if sm.rng.IntN(4) == 0 {
		mode, from = engine.RestartFrom, sm.g.Nodes[sm.rng.IntN(len(sm.g.Nodes))].Name
	}
	reply := make(chan error, 1)
	in, err := sm.s.restartRequest(ctx, id, mode, from, "sim restart", reply)
	if err != nil {
		sm.logf("restart run %d refused before the loop: %v", id, err)
		return
	}
	sm.s.in <- in
	sm.stepScheduler()
	select {
	case err = <-reply:
	case <-time.After(10 * time.Second):
		sm.fatalf("restart of run %d never answered", id)
	}
	sm.logf("restart run %d (mode %d from %q): %v", id, mode, from, err)
	if err != nil {
		return
	}
	delete(sm.cancelled, id)
	// Keep: succeeded instances of tasks that nothing rerun leads to.
	if mode != engine.RestartFailed {
		delete(sm.kept, id)
		return
	}
	taskState := map[string]store.InstanceState{}
	for _, in := range before {
		if in.Item == store.NoItem || in.State != store.InstanceSucceeded {
			if cur, ok := taskState[in.Task]; !ok || cur == store.InstanceSucceeded {
				taskState[in.Task] = in.State
			}
		}
	}
	rerun := map[int]bool{}
	for i, n := range sm.g.Nodes {
		if taskState[n.Name] != store.InstanceSucceeded {
			rerun[i] = true
		}
	}
	down := sm.downstream(rerun)
	keep := map[int64]int64{}
	for _, in := range before {
		ti, _ := sm.g.Lookup(in.Task)
		if in.State == store.InstanceSucceeded && !rerun[ti] && !down[ti] {
			keep[in.ID] = in.AttemptID
		}
	}
	sm.kept[id] = keep
}

// downstream returns the tasks reachable from the given ones through needs
// edges and stages, not counting the starting tasks themselves.
func (sm *sim) downstream(from map[int]bool) map[int]bool {
	g := sm.g
	out := map[int]bool{}
	var stack []int
	for i := range from {
		stack = append(stack, i)
	}
	for len(stack) > 0 {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		var next []int
		next = append(next, g.Nodes[v].Out...)
		if m := g.Nodes[v].Member; m >= 0 {
			next = append(next, g.Groups[m].Waiters...)
		}
		for _, o := range next {
			if !out[o] {
				out[o] = true
				stack = append(stack, o)
			}
		}
	}
	return out
}

// finish lets every run end: no more faults, every agent reconnects, time
// passes and messages flow until every run is over. A run that never ends
// is a failure too (an orphan nobody schedules).
func (sm *sim) finish() {
	for _, a := range sm.ags {
		a.frozen = time.Time{}
	}
	for i := 0; i < 3000; i++ {
		sm.step++
		sm.clk.advance(time.Duration(sm.rng.Int64N(int64(4 * time.Second))))
		for _, a := range sm.ags {
			a.tick()
			a.deliver()
			a.heartbeat()
		}
		sm.stepScheduler()
		over := sm.checkInvariants()
		if sm.t.Failed() || over {
			return
		}
	}
	var states []string
	for _, id := range sm.runs {
		run, _ := sm.st.RunGet(sm.ctx, &store.RunGetParams{ID: id})
		states = append(states, fmt.Sprintf("%d:%s", id, run.State))
	}
	var mem []string
	for _, r := range sm.s.runs {
		for _, t := range r.tasks {
			for _, in := range append([]*instRT{t.inst}, t.items...) {
				if in == nil || in.now().Done() {
					continue
				}
				desc := fmt.Sprintf("run %d %s/%d %s (stored %s)", r.run.ID, r.taskName(in.task), in.item, in.now(), in.stored)
				if att := in.live; att != nil {
					desc += fmt.Sprintf(" attempt %d on %s (renewed %s, state %s, cancel sent %v)", att.id, att.agent.Name,
						att.renewedAt.Format("15:04:05.000"), att.state, att.cancelSent)
				}
				mem = append(mem, desc)
			}
		}
	}
	for _, a := range sm.ags {
		mem = append(mem, fmt.Sprintf("agent %s: connected %v, running %v, unacked %v", a.name, a.sess != nil,
			slices.Sorted(mapKeys(a.running)), slices.Sorted(mapKeys(a.unacked))))
	}
	sm.fatalf("runs never finished: %v\n%s", states, strings.Join(mem, "\n"))
}

// --- agents ---

func (a *simAgent) connected() bool {
	if a.sess == nil {
		return false
	}
	select {
	case <-a.sess.Done():
		// The control plane closed the session (a timeout, a restart).
		a.sim.s.in <- goneInput{sess: a.sess, err: errors.New("closed by the control plane")}
		a.sess = nil
		a.retryAt = a.sim.clk.now().Add(time.Duration(a.sim.rng.Int64N(int64(2 * time.Second))))
		return false
	default:
		return true
	}
}

func (a *simAgent) cutOff() bool {
	if a.frozen.IsZero() {
		return false
	}
	if a.sim.clk.now().Before(a.frozen) {
		return true
	}
	a.frozen = time.Time{}
	a.sim.logf("%s reachable again", a.name)
	return false
}

// connect opens a session with a Hello listing what the agent runs and
// the outcomes not yet acknowledged.
func (a *simAgent) connect() {
	sm := a.sim
	now := sm.clk.now()
	a.sess = dispatch.NewSession(a.name)
	a.seq = 0
	a.sent = map[uint64]time.Time{0: now}
	h := &dispatch.Hello{Name: a.name, Slots: a.slots, BootID: fmt.Sprintf("%s-%d", a.name, a.boot)}
	if a.windows {
		h.OS = "windows"
	}
	for id := range a.running {
		h.Running = append(h.Running, id)
	}
	slices.Sort(h.Running)
	for _, id := range slices.Sorted(mapKeys(a.unacked)) {
		h.Unacked = append(h.Unacked, a.unacked[id])
	}
	reply := make(chan error, 1)
	sm.s.in <- helloInput{sess: a.sess, h: h, reply: reply}
	sm.stepScheduler()
	var err error
	select {
	case err = <-reply:
	default:
		err = errors.New("no answer")
	}
	sm.logf("%s hello (running %v, unacked %d): %v", a.name, h.Running, len(h.Unacked), err)
	if err != nil {
		a.sess.Close(err)
		a.sess = nil
		a.retryAt = now.Add(time.Second)
	}
}

func (a *simAgent) disconnect(newProcess bool) {
	if !a.connected() {
		return
	}
	sm := a.sim
	sm.s.in <- goneInput{sess: a.sess, err: errors.New("sim disconnect")}
	a.sess.Close(errors.New("sim disconnect"))
	a.sess = nil
	a.retryAt = sm.clk.now().Add(time.Duration(sm.rng.Int64N(int64(3 * time.Second))))
	if newProcess {
		a.boot++
	}
	sm.logf("%s disconnects (new process: %v)", a.name, newProcess)
}

func (a *simAgent) heartbeat() {
	if a.cutOff() || !a.connected() {
		return
	}
	a.seq++
	a.sent[a.seq] = a.sim.clk.now()
	hb := &dispatch.Heartbeat{Seq: a.seq}
	for id := range a.running {
		hb.Running = append(hb.Running, id)
	}
	slices.Sort(hb.Running)
	a.sim.send(a, hb)
}

// leaseFrom returns when a lease renewed by message seq of this session
// ends, or zero when the agent holds no leases.
func (a *simAgent) leaseFrom(seq uint64) (time.Time, bool) {
	if a.lease <= 0 {
		return time.Time{}, true
	}
	at, ok := a.sent[seq]
	if !ok {
		return time.Time{}, false
	}
	return at.Add(a.lease), true
}

func (a *simAgent) renew(id int64, seq uint64) {
	c := a.running[id]
	if c == nil || !c.stopAt.IsZero() {
		return
	}
	until, ok := a.leaseFrom(seq)
	if !ok || until.IsZero() {
		return
	}
	if c.deadline.IsZero() || until.After(c.deadline) {
		c.deadline = until
	}
}

// deliver hands the agent what the control plane sent it.
func (a *simAgent) deliver() {
	if a.cutOff() || !a.connected() {
		return
	}
	a.tick()
	sm := a.sim
	now := sm.clk.now()
	for _, m := range a.sess.Take() {
		switch m := m.(type) {
		case *dispatch.Welcome:
			a.lease = m.Lease
			for _, id := range m.Renewed {
				a.renew(id, 0)
			}
		case *dispatch.LeaseRenewal:
			for _, id := range m.AttemptIDs {
				a.renew(id, m.Seq)
			}
		case *dispatch.Start:
			if a.started[m.AttemptID] {
				continue // started at most once
			}
			a.started[m.AttemptID] = true
			if len(a.running) >= a.slots {
				f := &dispatch.Finished{AttemptID: m.AttemptID, Outcome: dispatch.OutcomeRejected, Error: "no free slot", ExitCode: -1}
				a.unacked[m.AttemptID] = f
				sm.send(a, f)
				continue
			}
			key := fmt.Sprintf("%d/%s/%s", m.RunID, m.Task, m.Item)
			c := &child{attempt: m.AttemptID, key: key, agent: a.name, start: now,
				plannedEnd: now.Add(time.Duration(500+sm.rng.IntN(20000)) * time.Millisecond), outcome: dispatch.OutcomeSucceeded}
			if sm.rng.IntN(4) == 0 {
				c.outcome = dispatch.OutcomeFailed
			}
			until, ok := a.leaseFrom(m.LeaseSeq)
			if !ok || !until.IsZero() && !now.Before(until) {
				// As the agent does: a start whose lease is unknown or over
				// (it waited while the agent was cut off) runs nothing.
				f := &dispatch.Finished{AttemptID: m.AttemptID, Outcome: dispatch.OutcomeRejected, Error: "lease expired before the start", ExitCode: -1}
				a.unacked[m.AttemptID] = f
				sm.send(a, f)
				continue
			}
			c.deadline = until
			a.running[m.AttemptID] = c
			sm.execs[key] = append(sm.execs[key], c)
			// Reordered: sometimes the start report is skipped and the
			// outcome comes alone.
			if sm.rng.IntN(5) != 0 {
				c.announced = true
				sm.send(a, &dispatch.Started{AttemptID: m.AttemptID, At: now})
			}
		case *dispatch.Cancel:
			if c := a.running[m.AttemptID]; c != nil && c.stopAt.IsZero() {
				c.stopAt = now.Add(time.Duration(sm.rng.Int64N(int64(m.KillGrace) + 1)))
				c.stopWith = dispatch.OutcomeCancelled
			}
		case *dispatch.Ack:
			for _, id := range m.AttemptIDs {
				if f := a.unacked[id]; f != nil {
					sm.acked[id] = f.Outcome
					delete(a.unacked, id)
				}
			}
		}
	}
	a.tick()
}

// tick moves the agent's children on to now: a lease that ran out stops
// its child (the runner does this, also while the agent is cut off), and
// children that ended report their outcomes when the agent can.
func (a *simAgent) tick() {
	sm := a.sim
	now := sm.clk.now()
	for _, id := range slices.Sorted(mapKeys(a.running)) {
		c := a.running[id]
		if c.stopAt.IsZero() && !c.deadline.IsZero() && c.deadline.Before(c.plannedEnd) && !now.Before(c.deadline) {
			// The worst case: SIGTERM ignored, SIGKILL after the grace.
			c.stopAt = c.deadline.Add(simKillGrace)
			c.stopWith = dispatch.OutcomeLeaseExpired
			sm.logf("%s fences attempt %d (lease ended %s)", a.name, id, c.deadline.Format("15:04:05.000"))
		}
		end, outcome := c.plannedEnd, c.outcome
		if !c.stopAt.IsZero() && c.stopAt.Before(end) {
			end, outcome = c.stopAt, c.stopWith
		}
		if now.Before(end) {
			continue
		}
		c.end = end
		delete(a.running, id)
		f := &dispatch.Finished{AttemptID: id, Outcome: outcome, StartedAt: c.start, FinishedAt: end}
		if outcome != dispatch.OutcomeSucceeded {
			f.ExitCode = 1
			f.Error = "sim outcome"
		}
		a.unacked[id] = f
	}
	if a.cutOff() {
		return
	}
	if a.sess == nil {
		if !now.Before(a.retryAt) {
			a.connect()
		}
		return
	}
	if !a.connected() {
		return
	}
	for _, id := range slices.Sorted(mapKeys(a.unacked)) {
		sm.send(a, a.unacked[id])
	}
}

// resendOutcome repeats an acknowledged outcome, as an agent does that
// lost its acknowledgement: it must change nothing.
func (a *simAgent) resendOutcome() {
	if a.cutOff() || !a.connected() {
		return
	}
	for _, id := range slices.Sorted(mapKeys(a.sim.acked)) {
		if a.started[id] {
			a.sim.send(a, &dispatch.Finished{AttemptID: id, Outcome: a.sim.acked[id], ExitCode: 0})
			a.sim.logf("%s repeats the outcome of attempt %d", a.name, id)
			return
		}
	}
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// --- invariants ---

// checkInvariants checks, after every step:
//   - no task instance ever has two live executions (the children's own
//     times, fenced children included);
//   - at most one live attempt per instance in the store;
//   - a task instance succeeds at most once per restart generation;
//   - nothing starts in a run after its cancel was accepted (until a
//     restart);
//   - a task is blocked only downstream of a failure;
//   - a restart from failure keeps succeeded work that nothing rerun
//     leads to;
//   - a run timeout stops a run no earlier than its limit after its last
//     (re)start;
//   - every acknowledged outcome is in the history;
//   - the scheduler's memory agrees with the store: every active run in
//     memory is active in the store with the same instance states, and
//     every active run in the store is in memory (nothing orphaned).
func (sm *sim) checkInvariants() (allOver bool) {
	sm.t.Helper()
	if sm.t.Failed() {
		return false
	}
	for key, list := range sm.execs {
		for i := range list {
			for j := i + 1; j < len(list); j++ {
				x, y := list[i], list[j]
				if overlaps(x, y) {
					sm.fatalf("instance %s ran twice at once: attempt %d on %s %s-%s and attempt %d on %s %s-%s", key,
						x.attempt, x.agent, x.start.Format("15:04:05.000"), endText(x), y.attempt, y.agent, y.start.Format("15:04:05.000"), endText(y))
				}
			}
		}
	}
	runs, insts, atts := sm.snapshot()
	allOver = true
	for _, id := range sm.runs {
		run := runs[id]
		if run == nil {
			sm.fatalf("run %d is not in the store", id)
		}
		allOver = allOver && run.State.Terminal()
		live := map[int64]int64{}
		type gen struct {
			inst    int64
			restart int
		}
		won := map[gen]int64{}
		for _, a := range atts[id] {
			if a.State.Live() {
				if other, ok := live[a.InstanceID]; ok {
					sm.fatalf("run %d instance %d has two live attempts: %d and %d", id, a.InstanceID, other, a.ID)
				}
				live[a.InstanceID] = a.ID
			}
			if a.State == store.AttemptSucceeded {
				k := gen{a.InstanceID, a.Restart}
				if other, ok := won[k]; ok {
					sm.fatalf("run %d instance %d succeeded twice in restart %d: attempts %d and %d", id, a.InstanceID, a.Restart, other, a.ID)
				}
				won[k] = a.ID
			}
			if m, ok := sm.cancelled[id]; ok && a.Restart == m.restart && !m.attempts[a.ID] {
				sm.fatalf("run %d: attempt %d of %s started after the run's cancel was accepted", id, a.ID, a.Task)
			}
			if want, ok := sm.acked[a.ID]; ok {
				ws := outcomeState(want)
				if want == dispatch.OutcomeLeaseExpired && a.LateState == store.AttemptCancelled {
					ws = store.AttemptCancelled // kept late as cancelled
				}
				if a.State != ws && a.LateState != ws {
					sm.fatalf("attempt %d: acknowledged outcome %v is not in the history (state %s, late %q)", a.ID, want, a.State, a.LateState)
				}
			}
		}
		byTask := map[string]*store.Instance{}
		for _, in := range insts[id] {
			if in.Item == store.NoItem {
				byTask[in.Task] = in
			}
		}
		for ti, n := range sm.g.Nodes {
			in := byTask[n.Name]
			if in == nil || in.State != store.InstanceBlocked {
				continue
			}
			if !sm.upstreamFailed(ti, byTask) {
				sm.fatalf("run %d: task %s is blocked but no upstream task failed", id, n.Name)
			}
		}
		if keep := sm.kept[id]; keep != nil {
			for _, in := range insts[id] {
				if att, ok := keep[in.ID]; ok && (in.State != store.InstanceSucceeded || in.AttemptID != att) {
					sm.fatalf("run %d: the restart reran %s item %d (now %s by attempt %d), which succeeded by attempt %d",
						id, in.Task, in.Item, in.State, in.AttemptID, att)
				}
			}
		}
		if tmo := sm.g.Spec.Timeout.D(); tmo > 0 && run.State.Terminal() && strings.Contains(run.Error, "run timeout") {
			evs, err := sm.st.EventList(sm.ctx, &store.EventListParams{RunID: id})
			if err != nil {
				sm.fatalf("EventList: %v", err)
			}
			for _, e := range evs {
				// This generation's timeout: counted from its own start. (An
				// event at the very millisecond of the restart belongs to
				// the generation before.)
				if e.RunState == store.RunCancelling && strings.Contains(e.Message, "run timeout") &&
					e.At.After(run.LastStart()) && e.At.Before(run.LastStart().Add(tmo)) {
					sm.fatalf("run %d stopped by its timeout at %s, before %s after its last start %s",
						id, e.At.Format("15:04:05.000"), tmo, run.LastStart().Format("15:04:05.000"))
				}
			}
		}
		sm.checkMemory(run, insts[id])
	}
	return allOver
}

// snapshot reads every run, task instance and attempt of the store in one
// read transaction, straight from the tables: the checker does not trust
// the store code it checks.
type snapshot struct {
	runs  map[int64]*store.Run
	insts map[int64][]*store.Instance
	atts  map[int64][]*store.Attempt
}

func (sm *sim) snapshot() (map[int64]*store.Run, map[int64][]*store.Instance, map[int64][]*store.Attempt) {
	ctx := sm.ctx
	tx, err := sm.raw.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		sm.fatalf("snapshot: %v", err)
	}
	defer func() { _ = tx.Rollback() }()
	// Nothing committed since the last snapshot: the same tables.
	var version int64
	if err := tx.StmtContext(ctx, sm.qVersion).QueryRowContext(ctx).Scan(&version); err != nil {
		sm.fatalf("snapshot: %v", err)
	}
	if sm.snap != nil && version == sm.snapVersion {
		return sm.snap.runs, sm.snap.insts, sm.snap.atts
	}
	ms := func(v sql.NullInt64) time.Time {
		if !v.Valid {
			return time.Time{}
		}
		return time.UnixMilli(v.Int64).UTC()
	}
	runs := map[int64]*store.Run{}
	rows, err := tx.StmtContext(ctx, sm.qRuns).QueryContext(ctx)
	if err != nil {
		sm.fatalf("snapshot runs: %v", err)
	}
	for rows.Next() {
		var r store.Run
		var started, restarted sql.NullInt64
		if err := rows.Scan(&r.ID, &r.State, &r.RestartCount, &r.Error, &started, &restarted); err != nil {
			sm.fatalf("snapshot runs: %v", err)
		}
		r.StartedAt, r.RestartedAt = ms(started), ms(restarted)
		runs[r.ID] = &r
	}
	if err := rows.Err(); err != nil {
		sm.fatalf("snapshot runs: %v", err)
	}
	insts := map[int64][]*store.Instance{}
	rows, err = tx.StmtContext(ctx, sm.qInsts).QueryContext(ctx)
	if err != nil {
		sm.fatalf("snapshot instances: %v", err)
	}
	for rows.Next() {
		var in store.Instance
		if err := rows.Scan(&in.ID, &in.RunID, &in.Task, &in.Item, &in.State, &in.AttemptID); err != nil {
			sm.fatalf("snapshot instances: %v", err)
		}
		insts[in.RunID] = append(insts[in.RunID], &in)
	}
	if err := rows.Err(); err != nil {
		sm.fatalf("snapshot instances: %v", err)
	}
	atts := map[int64][]*store.Attempt{}
	rows, err = tx.StmtContext(ctx, sm.qAtts).QueryContext(ctx)
	if err != nil {
		sm.fatalf("snapshot attempts: %v", err)
	}
	for rows.Next() {
		var a store.Attempt
		if err := rows.Scan(&a.ID, &a.InstanceID, &a.RunID, &a.Task, &a.Restart, &a.State, &a.LateState); err != nil {
			sm.fatalf("snapshot attempts: %v", err)
		}
		atts[a.RunID] = append(atts[a.RunID], &a)
	}
	if err := rows.Err(); err != nil {
		sm.fatalf("snapshot attempts: %v", err)
	}
	sm.snap, sm.snapVersion = &snapshot{runs: runs, insts: insts, atts: atts}, version
	return runs, insts, atts
}

func overlaps(x, y *child) bool {
	xe, ye := x.end, y.end
	if xe.IsZero() {
		xe = time.Unix(1<<40, 0)
	}
	if ye.IsZero() {
		ye = time.Unix(1<<40, 0)
	}
	return x.start.Before(ye) && y.start.Before(xe)
}

func endText(c *child) string {
	if c.end.IsZero() {
		return "running"
	}
	return c.end.Format("15:04:05.000")
}

func outcomeState(o dispatch.Outcome) store.AttemptState {
	switch o {
	case dispatch.OutcomeSucceeded:
		return store.AttemptSucceeded
	case dispatch.OutcomeCancelled, dispatch.OutcomeRejected:
		return store.AttemptCancelled
	case dispatch.OutcomeLeaseExpired:
		return store.AttemptLost
	case dispatch.OutcomeTimedOut:
		return store.AttemptTimedOut
	}
	return store.AttemptFailed
}

// upstreamFailed reports whether a task has a direct upstream (a needs
// edge or the stage before it) that did not succeed.
func (sm *sim) upstreamFailed(ti int, byTask map[string]*store.Instance) bool {
	bad := func(u int) bool {
		in := byTask[sm.g.Nodes[u].Name]
		if in == nil {
			return false
		}
		switch in.State {
		case store.InstanceFailed, store.InstanceLost, store.InstanceCancelled, store.InstanceBlocked:
			return true
		}
		return false
	}
	n := sm.g.Nodes[ti]
	for _, e := range n.In {
		if bad(e.From) {
			return true
		}
	}
	if n.After >= 0 {
		for _, m := range sm.g.Groups[n.After].Members {
			if bad(m) {
				return true
			}
		}
	}
	return false
}

// checkMemory compares the scheduler's in-memory run with the store.
func (sm *sim) checkMemory(run *store.Run, insts []*store.Instance) {
	r := sm.s.runs[run.ID]
	if r == nil {
		if run.State == store.RunRunning || run.State == store.RunCancelling {
			sm.fatalf("run %d is %s in the store but not in the scheduler's memory: nobody schedules it", run.ID, run.State)
		}
		return
	}
	if run.State.Terminal() || run.State == store.RunQueued {
		sm.fatalf("run %d is %s in the store but active in memory", run.ID, run.State)
	}
	for _, in := range insts {
		ti, ok := r.g.Lookup(in.Task)
		if !ok {
			sm.fatalf("run %d: unknown task %s", run.ID, in.Task)
		}
		m := r.instance(ti, in.Item)
		if m == nil {
			sm.fatalf("run %d: %s item %d is in the store but not in memory", run.ID, in.Task, in.Item)
		}
		// What the loop believes the store holds is what it holds.
		if m.stored != in.State {
			sm.fatalf("run %d: %s item %d is %s in the store, but the loop believes %s", run.ID, in.Task, in.Item, in.State, m.stored)
		}
		// The engine's state is the store's but for a start that rides
		// along with a later commit.
		now := m.now()
		lazy := m.live != nil && sm.s.lazyStarted[m.live] && now == store.InstanceRunning && in.State == store.InstanceDispatched
		if now != in.State && !lazy {
			sm.fatalf("run %d: %s item %d is %s in the engine but %s in the store", run.ID, in.Task, in.Item, now, in.State)
		}
	}
}
