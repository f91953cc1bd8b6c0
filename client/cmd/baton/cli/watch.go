package cli

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// latestRestart asks watch to follow the restart a run is at when the
// watch starts.
const latestRestart = -1

// watch follows run id to its end, printing its progress (or its events as
// JSON lines), and returns a *runEndedError unless the run succeeded.
//
// It follows the run from restart number restart on (0 for its first
// generation, latestRestart for the one the run is at now): the events of
// earlier generations are read past, not shown. A restart made while it
// watches is followed too.
func (a *app) watch(ctx context.Context, id int64, restart int32) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	// A broken stream is resumed; say so, or the pause looks like a hang.
	reconnecting := func(err error) {
		notef(a.env.Stderr, "baton: watch interrupted, reconnecting: %v\n", err)
	}
	var run *batonv1.Run
	if !a.json() || restart == latestRestart {
		uctx, cancel := a.unary(ctx)
		run, err = c.GetRun(uctx, id)
		cancel()
		if err != nil {
			return err
		}
		if restart == latestRestart {
			restart = run.GetRestartCount()
		}
	}
	if a.json() {
		final, err := c.WaitRun(ctx, id, &client.WaitOptions{
			FromRestart: restart,
			OnEvent:     func(ev *batonv1.RunEvent) error { return writeJSONLine(a.env.Stdout, ev) },
			OnReconnect: reconnecting,
		})
		if err != nil {
			return err
		}
		return outcome(final)
	}

	p := &progress{
		a:     a,
		c:     c,
		runID: id,
		known: make(map[instance]bool),
		state: make(map[instance]batonv1.TaskState),
		start: make(map[instance]time.Time),
		width: len("run"),
	}
	p.learn(run)
	generation := ""
	if restart > 0 {
		// The instances a restart keeps send no events in it; the first
		// event shown, the restart's, tells which those are.
		p.kept = run
		generation = fmt.Sprintf(", restart %d", restart)
	}
	if _, err := fmt.Fprintf(a.env.Stdout, "watching run %d: %s version %d%s, %s\n",
		id, run.GetJob(), run.GetJobVersion(), generation, plural(len(p.known), "task")); err != nil {
		return err
	}
	final, err := c.WaitRun(ctx, id, &client.WaitOptions{
		FromRestart: restart,
		OnEvent:     func(ev *batonv1.RunEvent) error { return p.event(ctx, ev) },
		OnReconnect: reconnecting,
	})
	if err != nil {
		return err
	}
	// A restarted run's own times span every generation; the time shown
	// is that of the one watched, from its restart event on.
	start := cmp.Or(final.GetStartTime(), final.GetCreateTime())
	if final.GetRestartCount() > 0 && p.genStart != nil {
		start = p.genStart
	}
	took, after := "", ""
	if wall := a.clock.elapsed(start, final.GetEndTime()); wall != "" {
		took = " in " + wall
	}
	if n := final.GetRestartCount(); n > 0 {
		after = fmt.Sprintf(" after restart %d", n)
	}
	if _, err := fmt.Fprintf(a.env.Stdout, "run %d %s%s%s: %s\n", id, runState(final.GetState()),
		took, after, stateCounts(final.GetTasks())); err != nil {
		return err
	}
	return outcome(final)
}

// outcome is nil for a run that succeeded and a *runEndedError otherwise.
func outcome(run *batonv1.Run) error {
	if run.GetState() == batonv1.RunState_RUN_STATE_SUCCEEDED {
		return nil
	}
	return &runEndedError{id: run.GetId(), state: runState(run.GetState()), reason: run.GetError()}
}

// progress renders a run's events as lines of text, one per state change,
// with a running count of finished task instances. It is not safe for
// concurrent use; WaitRun calls it from one goroutine.
type progress struct {
	a     *app
	c     *client.Client
	runID int64

	// known holds every task instance of the run, from GetRun and from
	// events; len(known) is the total shown.
	known map[instance]bool
	// state is each instance's latest state seen in an event.
	state map[instance]batonv1.TaskState
	// start is when each instance's current attempt was dispatched or
	// started, for the duration shown when it ends.
	start map[instance]time.Time

	// genStart is the time of the first run-state event of the generation
	// being shown; ended says the latest run-state event was terminal.
	genStart *timestamppb.Timestamp
	ended    bool
	// kept, when set, is the run as it was when the watch of a restart
	// began; the first event seeds the states of its instances from it.
	kept *batonv1.Run

	width      int // of the task column
	agentWidth int // of the agent column
}

// seed takes the state of the task instances of run that were done by
// time at (the restart being watched) as their state, until an event says
// otherwise. An instance whose latest attempt ended later ran again in the
// restart: its events tell its state.
func (p *progress) seed(run *batonv1.Run, at time.Time) {
	for _, t := range run.GetTasks() {
		if taskDone(t.GetState()) && (t.GetEndTime() == nil || !t.GetEndTime().AsTime().After(at)) {
			p.state[newInstance(t.GetTask(), t.ItemIndex)] = t.GetState()
		}
	}
}

// learn adds the task instances of run to the known set.
func (p *progress) learn(run *batonv1.Run) {
	for _, t := range run.GetTasks() {
		in := newInstance(t.GetTask(), t.ItemIndex)
		p.known[in] = true
		p.width = max(p.width, len(in.String()))
	}
}

func (p *progress) done() int {
	n := 0
	for in := range p.known {
		if taskDone(p.state[in]) {
			n++
		}
	}
	return n
}

// event prints the line for one event.
func (p *progress) event(ctx context.Context, ev *batonv1.RunEvent) error {
	at := p.a.clock.now()
	if ev.GetTime() != nil {
		at = ev.GetTime().AsTime()
	}
	if p.kept != nil {
		p.seed(p.kept, at)
		p.kept = nil
	}
	label, state, dur := "run", runState(ev.GetRunState()), ""
	if ev.GetTask() == "" && ev.GetRunState() != batonv1.RunState_RUN_STATE_UNSPECIFIED {
		if p.genStart == nil || p.ended {
			p.genStart = timestamppb.New(at)
		}
		p.ended = client.Terminal(ev.GetRunState())
	}
	if ev.GetTask() != "" {
		in := newInstance(ev.GetTask(), ev.ItemIndex)
		if !p.known[in] {
			p.refresh(ctx)
			p.known[in] = true
			p.width = max(p.width, len(in.String()))
		}
		st := ev.GetTaskState()
		p.state[in] = st
		switch {
		case st == batonv1.TaskState_TASK_STATE_DISPATCHED, st == batonv1.TaskState_TASK_STATE_RUNNING:
			p.start[in] = at
		case taskDone(st):
			if s, ok := p.start[in]; ok {
				dur = humanDuration(at.Sub(s))
			}
			delete(p.start, in)
		default:
			delete(p.start, in)
		}
		label, state = in.String(), taskState(st)
	}

	var extra []string
	if ev.ExitCode != nil && ev.GetExitCode() != 0 {
		extra = append(extra, fmt.Sprintf("exit %d", ev.GetExitCode()))
	}
	if ev.GetMessage() != "" {
		extra = append(extra, ev.GetMessage())
	}
	p.agentWidth = max(p.agentWidth, len(ev.GetAgent()))
	count := fmt.Sprintf("[%d/%d]", p.done(), len(p.known))
	line := fmt.Sprintf("%s  %-*s  %-*s  %-10s  %-*s  %-6s  %s",
		p.a.clock.timeOfDay(ev.GetTime()),
		len(fmt.Sprintf("[%d/%d]", len(p.known), len(p.known))), count,
		p.width, label, state,
		p.agentWidth, ev.GetAgent(), dur, strings.Join(extra, ": "))
	_, err := fmt.Fprintln(p.a.env.Stdout, strings.TrimRight(line, " "))
	return err
}

// refresh asks the control plane for the run's task instances again, when
// an event names one it did not list before (for-each items appear as the
// run goes). The count is cosmetic, so a failed refresh is not an error:
// the event's own instance is still counted.
func (p *progress) refresh(ctx context.Context) {
	ctx, cancel := p.a.unary(ctx)
	defer cancel()
	if run, err := p.c.GetRun(ctx, p.runID); err == nil {
		p.learn(run)
	}
}
