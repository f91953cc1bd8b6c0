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
	if !s.Leader() {
		return s.notLeading()
	}
	reply := make(chan error, 1)
	in, err := s.restartRequest(ctx, runID, mode, from, reason, reply)
	if err != nil {
		return err
	}
	if err := s.enqueue(ctx, in); err != nil {
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

// restartRequest reads what a restart needs, off the loop. The loop takes
// the run over only if it is still the generation read here, finished,
// and not active in memory.
func (s *Scheduler) restartRequest(ctx context.Context, runID int64, mode engine.RestartMode, from, reason string, reply chan error) (restartInput, error) {
	run, err := s.st.RunGet(ctx, &store.RunGetParams{ID: runID})
	if err != nil {
		return restartInput{}, err
	}
	if !run.State.Terminal() {
		return restartInput{}, ErrActive
	}
	// A deleted job has no active run (JobDelete refuses while one is):
	// a restart must not bring one back.
	j, err := s.st.JobGet(ctx, &store.JobGetParams{Name: run.JobName})
	if errors.Is(err, store.ErrNotFound) || err == nil && j.ID != run.JobID {
		return restartInput{}, fmt.Errorf("job %q was deleted; apply it again to restart its runs: %w", run.JobName, store.ErrConflict)
	}
	if err != nil {
		return restartInput{}, err
	}
	insts, err := s.st.InstanceList(ctx, &store.InstanceListParams{RunID: run.ID})
	if err != nil {
		return restartInput{}, err
	}
	prep, err := s.prepare(ctx, run)
	if err != nil {
		return restartInput{}, err
	}
	return restartInput{run: run, insts: insts, prep: prep, mode: mode, from: from, reason: reason, reply: reply}, nil
}

// ErrActive is returned when restarting a run that has not finished.
var ErrActive = errors.New("run is still active")

// errRestartedMeanwhile refuses a restart read before another restart of
// the same run was applied.
var errRestartedMeanwhile = fmt.Errorf("the run was restarted by another request meanwhile; look at it and try again: %w", store.ErrConflict)

type restartInput struct {
	run    *store.Run
	insts  []*store.Instance
	prep   *prepared
	mode   engine.RestartMode
	from   string
	reason string
	reply  chan error
}

func (in restartInput) apply(s *Scheduler) {
	fail := func(err error) { in.reply <- err }
	run, insts, g := in.run, in.insts, in.prep.g
	if _, ok := s.runs[run.ID]; ok {
		fail(ErrActive)
		return
	}
	for _, q := range s.queued {
		for _, r := range q {
			if r.run.ID == run.ID {
				fail(ErrActive)
				return
			}
		}
	}
	// Another restart applied after this one read the run would make what
	// it read stale: the run may have run and finished again since.
	if m, ok := s.restarts[run.ID]; ok && m.count > run.RestartCount {
		fail(errRestartedMeanwhile)
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
	s.markRestart(run.ID, restarted.RestartCount)
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
	if err := s.loadRestarted(&restarted, insts, in.prep, rerun); err != nil {
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

// restartMark is a restart the loop applied.
type restartMark struct {
	count int
	at    time.Time
}

// restartMemory is how long a restart is remembered: far longer than a
// Restart call takes between reading the run and the loop applying it.
const restartMemory = 10 * time.Minute

// markRestart remembers that run id reached restart count n, and forgets
// restarts older than restartMemory, so the map stays small.
func (s *Scheduler) markRestart(id int64, n int) {
	now := s.now()
	if len(s.restarts) >= 256 {
		for k, m := range s.restarts {
			if now.Sub(m.at) > restartMemory {
				delete(s.restarts, k)
			}
		}
	}
	s.restarts[id] = restartMark{count: n, at: now}
}

// loadRestarted takes over a restarted run: the instances it runs again
// make restart attempts, with their retry and loss budgets fresh.
func (s *Scheduler) loadRestarted(run *store.Run, insts []*store.Instance, prep *prepared, rerun map[int64]bool) error {
	if err := s.loadRun(run, insts, nil, prep); err != nil {
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
