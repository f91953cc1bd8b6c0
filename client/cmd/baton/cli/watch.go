package cli

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// watch follows run id to its end, printing its progress (or its events as
// JSON lines), and returns a *runEndedError unless the run succeeded.
func (a *app) watch(ctx context.Context, id int64) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	// A broken stream is resumed; say so, or the pause looks like a hang.
	reconnecting := func(err error) {
		fmt.Fprintf(a.env.Stderr, "baton: watch interrupted, reconnecting: %v\n", err)
	}
	if a.json() {
		run, err := c.WaitRun(ctx, id, &client.WaitOptions{
			OnEvent:     func(ev *batonv1.RunEvent) error { return writeJSONLine(a.env.Stdout, ev) },
			OnReconnect: reconnecting,
		})
		if err != nil {
			return err
		}
		return outcome(run)
	}

	uctx, cancel := a.unary(ctx)
	run, err := c.GetRun(uctx, id)
	cancel()
	if err != nil {
		return err
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
	if _, err := fmt.Fprintf(a.env.Stdout, "watching run %d: %s version %d, %s\n",
		id, run.GetJob(), run.GetJobVersion(), plural(len(p.known), "task")); err != nil {
		return err
	}
	final, err := c.WaitRun(ctx, id, &client.WaitOptions{
		OnEvent:     func(ev *batonv1.RunEvent) error { return p.event(ctx, ev) },
		OnReconnect: reconnecting,
	})
	if err != nil {
		return err
	}
	took := ""
	if wall := a.clock.elapsed(cmp.Or(final.GetStartTime(), final.GetCreateTime()), final.GetEndTime()); wall != "" {
		took = " in " + wall
	}
	if _, err := fmt.Fprintf(a.env.Stdout, "run %d %s%s: %s\n", id, runState(final.GetState()),
		took, stateCounts(final.GetTasks())); err != nil {
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

	width      int // of the task column
	agentWidth int // of the agent column
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
	label, state, dur := "run", runState(ev.GetRunState()), ""
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
