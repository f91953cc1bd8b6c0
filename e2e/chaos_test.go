package e2e

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const (
	// chaosChains x chaosLinks tasks make the chaos job.
	chaosChains = 60
	chaosLinks  = 5
	// chaosVictim is the agent the chaos test kills and starts again.
	chaosVictim = "etl-2"
	// chaosSlots is each agent's slots.
	chaosSlots = 8
)

// chaosJob is 300 tasks: 60 chains of 5, each child sleeping 0.2 to 0.6 s.
func chaosJob() string {
	var b strings.Builder
	b.WriteString("name: chaos\ntasks:\n")
	for ch := range chaosChains {
		for l := range chaosLinks {
			needs := ""
			if l > 0 {
				needs = fmt.Sprintf(", needs: [c%02d-%d]", ch, l-1)
			}
			secs := float64(2+(ch*7+l*3)%5) / 10
			fmt.Fprintf(&b, "  - {name: c%02d-%d%s, run: [TASK, spawn, '0', '%.1f']}\n", ch, l, needs, secs)
		}
	}
	return b.String()
}

// TestCrashResume runs a 300-task job over three agents while batond is
// killed with SIGKILL three times at random points and restarted on the
// same data directory and port, and one agent is killed with SIGKILL and
// restarted once: see runChaos.
func TestCrashResume(t *testing.T) {
	t.Parallel()
	runChaos(t, true)
}

// runChaos runs a 300-task job over three agents while batond is killed
// with SIGKILL three times at random points of progress and restarted on
// the same data directory and port; with killAgent, one agent is also
// killed with SIGKILL at a random point and started again with the same
// name and state directory. The run must succeed with every task instance
// decided by exactly one succeeded attempt, no task run twice on an agent
// that survived, the killed agent's children re-adopted with their
// outcomes recorded, and no process left behind.
func runChaos(t *testing.T, killAgent bool) {
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("chaos seed %d", seed)

	// A fixed node id: the restarted batond holds the same leader lease, as
	// a restart with the same flags would (the default id names the port,
	// which is 0 at the first start only).
	c := newCluster(t, withBatondFlags("--node-id", "chaos"))
	for _, name := range []string{"etl-1", "etl-2", "etl-3"} {
		c.agent(name, chaosSlots)
	}
	c.waitAgents(3)
	c.apply(chaosJob())
	const total = chaosChains * chaosLinks
	began := time.Now()
	id := c.startRun("chaos", nil).GetId()

	// Random points of progress, in order: batond is killed at three of
	// them and, with killAgent, the agent at a fourth, each while work is
	// in flight.
	points := make([]int, 3)
	agentAt := -1
	if killAgent {
		points = append(points, 0)
		agentAt = rng.IntN(len(points))
	}
	for i := range points {
		points[i] = total/10 + rng.IntN(total*7/10)
	}
	slices.Sort(points)

	type restart struct {
		at        time.Time // batond was started again
		listening time.Time // it wrote its addresses
		inFlight  int       // attempts in flight when it was killed
	}
	var restarts []restart
	var adopted map[string]int64 // task -> attempt running on the victim when it was killed
	for i, p := range points {
		var snap *batonv1.Run
		waitFor(t, 2*time.Minute, fmt.Sprintf("%d tasks done and some in flight", p), func() bool {
			r, err := c.c.GetRun(t.Context(), id)
			if err != nil {
				return false
			}
			snap = r
			return doneTasks(r) >= p && inFlight(r) >= chaosSlots
		})
		if i == agentAt {
			waitFor(t, time.Minute, "children running on "+chaosVictim, func() bool {
				r, err := c.c.GetRun(t.Context(), id)
				if err != nil {
					return false
				}
				snap = r
				return runningOn(r, chaosVictim) > 0
			})
			adopted = map[string]int64{}
			for _, tr := range snap.GetTasks() {
				if tr.GetAgent() == chaosVictim && tr.GetState() == batonv1.TaskState_TASK_STATE_RUNNING {
					adopted[tr.GetTask()] = tr.GetAttemptId()
				}
			}
			t.Logf("killing agent %s with %d children running (%d tasks done)", chaosVictim, len(adopted), doneTasks(snap))
			c.agents[chaosVictim].kill()
			c.agent(chaosVictim, chaosSlots)
			continue
		}
		n := inFlight(snap)
		t.Logf("killing batond with %d attempts in flight (%d tasks done)", n, doneTasks(snap))
		at := c.restartBatond()
		restarts = append(restarts, restart{at: at, listening: time.Now(), inFlight: n})
	}
	run := c.waitState(id, 2*time.Minute, batonv1.RunState_RUN_STATE_SUCCEEDED, batonv1.RunState_RUN_STATE_FAILED,
		batonv1.RunState_RUN_STATE_CANCELLED)
	t.Logf("run ended %v after %s", run.GetState(), time.Since(began).Round(time.Millisecond))
	if run.GetState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		for _, tr := range run.GetTasks() {
			if tr.GetState() != batonv1.TaskState_TASK_STATE_SUCCEEDED {
				t.Logf("%s: %v on %s: %s", tr.GetTask(), tr.GetState(), tr.GetAgent(), tr.GetError())
			}
		}
		t.Fatalf("run = %v (%s), want SUCCEEDED", run.GetState(), run.GetError())
	}

	// Every task instance is decided by exactly one succeeded attempt.
	atts := c.attempts(id, "")
	byTask := map[string][]*batonv1.Attempt{}
	for _, a := range atts {
		byTask[a.GetTask()] = append(byTask[a.GetTask()], a)
	}
	if len(run.GetTasks()) != total {
		t.Errorf("run has %d task instances, want %d", len(run.GetTasks()), total)
	}
	for _, tr := range run.GetTasks() {
		var ok []int64
		for _, a := range byTask[tr.GetTask()] {
			if a.GetState() == batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED {
				ok = append(ok, a.GetId())
			}
		}
		if len(ok) != 1 || ok[0] != tr.GetAttemptId() {
			t.Errorf("%s: succeeded attempts %v, decided by %d; want exactly the deciding one", tr.GetTask(), ok, tr.GetAttemptId())
		}
	}

	// What the children recorded: a task whose first run was on an agent
	// that survived ran exactly once.
	twiceOnVictim := 0
	for _, tr := range run.GetTasks() {
		lines := c.ran(tr.GetTask())
		if len(lines) == 0 || lines[0] == "" {
			t.Errorf("%s never ran", tr.GetTask())
			continue
		}
		if len(lines) == 1 {
			continue
		}
		if !killAgent || markField(lines[0], "agent") != chaosVictim {
			t.Errorf("%s ran %d times: %v; want once (its agent survived)", tr.GetTask(), len(lines), lines)
			continue
		}
		twiceOnVictim++
	}
	if killAgent {
		t.Logf("%d tasks first run on the killed agent ran again", twiceOnVictim)
	}

	// The killed agent's children were re-adopted: the attempt running when
	// it died is the one that succeeded, and the child ran once.
	if killAgent && len(adopted) == 0 {
		t.Errorf("no child was running on %s when it was killed", chaosVictim)
	}
	for name, attID := range adopted {
		var got *batonv1.Attempt
		for _, a := range byTask[name] {
			if a.GetId() == attID {
				got = a
			}
		}
		if got == nil || got.GetState() != batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED || got.GetAgent() != chaosVictim {
			t.Errorf("%s: attempt %d, running on %s when it was killed, = %v; want SUCCEEDED on %s (re-adopted)",
				name, attID, chaosVictim, got, chaosVictim)
		}
		if lines := c.ran(name); len(lines) != 1 {
			t.Errorf("%s (re-adopted) ran %d times: %v, want once", name, len(lines), lines)
		}
	}

	// How soon a restarted batond dispatches again.
	for i, r := range restarts {
		first := time.Time{}
		for _, a := range atts {
			if d := a.GetDispatchTime().AsTime(); d.After(r.at) && (first.IsZero() || d.Before(first)) {
				first = d
			}
		}
		if first.IsZero() {
			t.Logf("restart %d (%d attempts in flight): no dispatch after it", i+1, r.inFlight)
			continue
		}
		t.Logf("restart %d (%d attempts in flight): first dispatch %s after batond was started again (listening after %s)",
			i+1, r.inFlight, first.Sub(r.at).Round(time.Millisecond), r.listening.Sub(r.at).Round(time.Millisecond))
	}

	// Every child has exited, also those of the killed agent.
	var pids []int
	for _, tr := range run.GetTasks() {
		pids = append(pids, c.pids(tr.GetTask())...)
	}
	waitGone(t, 10*time.Second, "the run's children", pids)

	// Nothing is left behind once the agents stop: no child, no runner.
	for _, p := range c.agents {
		p.stop(t)
	}
	waitFor(t, 30*time.Second, "every process of the agents to exit", func() bool {
		return len(c.leftovers()) == 0
	})
}

// doneTasks counts a run's task instances that have ended.
func doneTasks(r *batonv1.Run) int {
	n := 0
	for _, tr := range r.GetTasks() {
		switch tr.GetState() {
		case batonv1.TaskState_TASK_STATE_SUCCEEDED, batonv1.TaskState_TASK_STATE_FAILED,
			batonv1.TaskState_TASK_STATE_SKIPPED, batonv1.TaskState_TASK_STATE_BLOCKED,
			batonv1.TaskState_TASK_STATE_CANCELLED, batonv1.TaskState_TASK_STATE_LOST:
			n++
		}
	}
	return n
}

// inFlight counts a run's task instances dispatched or running.
func inFlight(r *batonv1.Run) int {
	n := 0
	for _, tr := range r.GetTasks() {
		switch tr.GetState() {
		case batonv1.TaskState_TASK_STATE_DISPATCHED, batonv1.TaskState_TASK_STATE_RUNNING:
			n++
		}
	}
	return n
}
