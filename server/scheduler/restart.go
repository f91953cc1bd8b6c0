package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/batonhq/baton/server/engine"
	"github.com/batonhq/baton/server/store"
)

// BadRestartError is returned when a restart names a task the run's job
// version does not have.
type BadRestartError struct{ Msg string }

func (e *BadRestartError) Error() string { return e.Msg }

// Restart continues a finished run under the same run id: the instances
// engine.Restart picks run again, the rest keep their state and outputs,
// and the run's restart count grows by one. A run still active is refused
// with ErrActive, an unknown run with store.ErrNotFound, a task the job
// does not have with a *BadRestartError, and a run whose job forbids overlap
// while another of its runs is active with store.ErrAlreadyActive.
func (s *Scheduler) Restart(ctx context.Context, runID int64, mode engine.RestartMode, from, reason string) error {
	reply := make(chan error, 1)
	if err := s.enqueue(ctx, restartInput{id: runID, mode: mode, from: from, reason: reason, reply: reply}); err != nil {
		return err
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stopped:
		return ErrStopped
	}
}

// ErrActive is returned when restarting a run that has not finished.
var ErrActive = errors.New("run is still active")

type restartInput struct {
	id     int64
	mode   engine.RestartMode
	from   string
	reason string
	reply  chan error
}

func (in restartInput) apply(s *Scheduler) {
	fail := func(err error) { in.reply <- err }
	if _, ok := s.runs[in.id]; ok {
		fail(ErrActive)
		return
	}
	for _, q := range s.queued {
		for _, r := range q {
			if r.ID == in.id {
				fail(ErrActive)
				return
			}
		}
	}
	ctx := s.ctx
	run, err := s.st.RunGet(ctx, &store.RunGetParams{ID: in.id})
	if err != nil {
		fail(err)
		return
	}
	if !run.State.Terminal() {
		fail(ErrActive)
		return
	}
	if run.Overlap != store.OverlapAllow {
		for _, r := range s.runs {
			if r.run.JobID == run.JobID && r.run.Overlap != store.OverlapAllow {
				fail(fmt.Errorf("run %d of the same job is active: %w", r.run.ID, store.ErrAlreadyActive))
				return
			}
		}
	}
	g, err := s.graph(ctx, run.JobID, run.JobVersion)
	if err != nil {
		fail(err)
		return
	}
	insts, err := s.st.InstanceList(ctx, &store.InstanceListParams{RunID: run.ID})
	if err != nil {
		fail(err)
		return
	}
	views := make([]engine.Instance, len(insts))
	for i, x := range insts {
		views[i] = engine.Instance{Task: x.Task, Item: x.Item, State: x.State}
	}
	resets, err := engine.Restart(g, views, in.mode, in.from)
	if err != nil {
		fail(&BadRestartError{Msg: err.Error()})
		return
	}
	reason := in.reason
	if reason == "" {
		reason = "restarted by request"
	}

	// Write the restart, then take the run over as if it had just started.
	restarted := *run
	restarted.State = store.RunRunning
	restarted.RestartCount++
	restarted.Error = ""
	restarted.FinishedAt = time.Time{}
	// The run timeout counts from the restart; the store records the
	// restart's time with it (RestartedAt), so a control plane that loads
	// the run afresh counts from the same moment.
	restarted.RestartedAt = s.now().UTC()
	s.write(func(ctx context.Context, tx store.Store) error {
		_, err := tx.RunTransition(ctx, &store.RunTransitionParams{
			ID: run.ID, From: []store.RunState{run.State}, To: store.RunRunning,
		})
		if err != nil {
			return fmt.Errorf("restart run %d: %w", run.ID, err)
		}
		return nil
	})
	s.event(&store.Event{RunID: run.ID, Item: store.NoItem, RunState: store.RunRunning,
		Message: fmt.Sprintf("restart %d: %s", restarted.RestartCount, reason)})
	byKey := map[[2]any]*store.Instance{}
	for _, x := range insts {
		byKey[[2]any{x.Task, x.Item}] = x
	}
	rerun := map[int64]bool{}
	for _, rs := range resets {
		x := byKey[[2]any{rs.Task, rs.Item}]
		if x == nil {
			continue
		}
		id, from, to := x.ID, x.State, rs.To
		s.write(func(ctx context.Context, tx store.Store) error {
			return tx.InstanceTransition(ctx, &store.InstanceTransitionParams{
				ID: id, From: []store.InstanceState{from}, To: to,
			})
		})
		x.State, x.Error = to, ""
		rerun[x.ID] = true
		s.event(&store.Event{RunID: run.ID, Task: rs.Task, Item: rs.Item, InstanceState: to, Message: "restart"})
	}
	if err := s.loadRestarted(&restarted, insts, rerun); err != nil {
		s.log.Error("cannot load restarted run; failing it", slog.Int64("run_id", run.ID), slog.Any("error", err))
		s.failUnloadable(&restarted, err)
	}
	s.after(func() {
		s.log.Info("run restarted", slog.Int64("run_id", run.ID), slog.Int("restart", restarted.RestartCount),
			slog.Int("instances", len(resets)), slog.String("reason", reason))
		in.reply <- nil
	})
	s.onFail(func() { in.reply <- ErrStopped })
}

// loadRestarted takes over a restarted run: the instances it runs again
// make restart attempts, with their retry and loss budgets fresh.
func (s *Scheduler) loadRestarted(run *store.Run, insts []*store.Instance, rerun map[int64]bool) error {
	if err := s.loadRun(s.ctx, run, insts, nil); err != nil {
		return err
	}
	r := s.runs[run.ID]
	if r == nil {
		return nil // already over (nothing to run again)
	}
	for _, t := range r.tasks {
		for _, in := range append([]*instRT{t.inst}, t.items...) {
			if in != nil && rerun[in.id] && in.attempts > 0 {
				in.kind = store.AttemptRestart
			}
		}
	}
	return nil
}
