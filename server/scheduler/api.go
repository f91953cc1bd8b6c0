package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/batonhq/baton/server/dispatch"
	"github.com/batonhq/baton/server/store"
)

// Hello implements dispatch.Handler: it admits an agent session once the
// loop has recorded it, or refuses it (ALREADY_EXISTS while another live
// agent holds the name).
func (s *Scheduler) Hello(ctx context.Context, sess *dispatch.Session, h *dispatch.Hello) error {
	if !s.Leader() {
		return dispatch.Unavailable(s.notLeading().Error())
	}
	reply := make(chan error, 1)
	if err := s.enqueue(ctx, helloInput{sess: sess, h: h, reply: reply}); err != nil {
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

// Message implements dispatch.Handler.
func (s *Scheduler) Message(ctx context.Context, sess *dispatch.Session, msg any) error {
	return s.enqueue(ctx, messageInput{sess: sess, msg: msg})
}

// Gone implements dispatch.Handler.
func (s *Scheduler) Gone(sess *dispatch.Session, err error) {
	// Never block a finished stream for long; the loop is the only reader.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.enqueue(ctx, goneInput{sess: sess, err: err})
}

// CreateRun creates a run in the store and hands it to the loop. The
// run is written in a transaction fenced by the leader lease, so a batond
// that lost leadership cannot create a run that no leader schedules: it
// fails with store.ErrNotLeader and writes nothing. A run created just
// before leadership moves is in the store when the next leader loads the
// active runs. insts are the run's instances when it was created (nil for
// an existing run returned for its request id).
func (s *Scheduler) CreateRun(ctx context.Context, p *store.RunCreateParams) (*store.RunCreateResult, error) {
	if !s.Leader() {
		return nil, s.notLeading()
	}
	fence := &store.LeaderCheckParams{Name: leaseName, Holder: s.cfg.Holder, Token: s.token.Load()}
	var res *store.RunCreateResult
	var insts []*store.Instance
	err := s.st.InTx(ctx, func(tx store.Store) error {
		res, insts = nil, nil
		if err := tx.LeaderCheck(ctx, fence); err != nil {
			return err
		}
		var err error
		if res, err = tx.RunCreate(ctx, p); err != nil || !res.Created {
			return err
		}
		insts, err = tx.InstanceList(ctx, &store.InstanceListParams{RunID: res.Run.ID})
		return err
	})
	if err != nil {
		return nil, err
	}
	if res.Created {
		if err := s.Started(ctx, res.Run, insts); err != nil {
			// The run is stored; the leader that loads it next runs it.
			s.log.WarnContext(ctx, "run stored but not yet scheduled", slog.Int64("run_id", res.Run.ID), slog.Any("error", err))
		}
	}
	return res, nil
}

// Started hands the scheduler a run the store has just created (running or
// queued), with its instances. It returns once the loop has taken the run
// over; the run's first decisions are committed by then.
func (s *Scheduler) Started(ctx context.Context, run *store.Run, insts []*store.Instance) error {
	reply := make(chan error, 1)
	in := s.runInput(ctx, run, insts, reply)
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

// runInput reads what loading a new run needs, off the loop, and returns
// the input that hands it to the loop.
func (s *Scheduler) runInput(ctx context.Context, run *store.Run, insts []*store.Instance, reply chan error) input {
	prep, err := s.prepare(ctx, run)
	if err != nil {
		// The loop fails a run it cannot load, and says why.
		prep = &prepared{}
		s.log.ErrorContext(ctx, "cannot prepare run", slog.Int64("run_id", run.ID), slog.Any("error", err))
	}
	if run.State == store.RunQueued {
		return queueInput{q: &queuedRun{run: run, insts: insts, prep: prep}, reply: reply}
	}
	return loadInput{run: run, insts: insts, prep: prep, reply: reply}
}

// queueInput records a queued run; it starts when its job's active run ends.
type queueInput struct {
	q     *queuedRun
	reply chan error
}

func (in queueInput) apply(s *Scheduler) {
	job := in.q.run.JobID
	s.queued[job] = append(s.queued[job], in.q)
	// The active run may have ended before this run was handed over.
	s.promote(job)
	s.after(func() { in.reply <- nil })
	s.onFail(func() { in.reply <- ErrStopped })
}

// Cancel stops a run: children in flight are stopped (SIGTERM, then
// SIGKILL after the kill grace) and the run ends cancelled. It returns
// store.ErrNotFound for an unknown run and ErrNotActive for a run that is
// already over.
func (s *Scheduler) Cancel(ctx context.Context, runID int64, reason string) error {
	reply := make(chan error, 1)
	if err := s.enqueue(ctx, cancelInput{id: runID, reason: reason, reply: reply}); err != nil {
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

type cancelInput struct {
	id     int64
	reason string
	reply  chan error
}

func (in cancelInput) apply(s *Scheduler) {
	reason := in.reason
	if reason == "" {
		reason = "cancelled by request"
	}
	if r := s.runs[in.id]; r != nil {
		if !r.eng.Stopping() {
			s.stop(r, true, reason)
		}
		s.after(func() { in.reply <- nil })
		s.onFail(func() { in.reply <- ErrStopped })
		return
	}
	for jobID, q := range s.queued {
		i := slices.IndexFunc(q, func(r *queuedRun) bool { return r.run.ID == in.id })
		if i < 0 {
			continue
		}
		s.queued[jobID] = slices.Delete(q, i, i+1)
		s.write(func(ctx context.Context, tx store.Store) error {
			_, err := tx.RunTransition(ctx, &store.RunTransitionParams{
				ID: in.id, From: []store.RunState{store.RunQueued}, To: store.RunCancelled, Error: reason,
			})
			if err != nil {
				return err
			}
			insts, err := tx.InstanceList(ctx, &store.InstanceListParams{RunID: in.id})
			if err != nil {
				return err
			}
			for _, inst := range insts {
				err := tx.InstanceTransition(ctx, &store.InstanceTransitionParams{
					ID: inst.ID, From: []store.InstanceState{store.InstancePending}, To: store.InstanceCancelled, Error: reason,
				})
				if err := ignoreConflict(err); err != nil {
					return err
				}
			}
			return nil
		})
		s.event(&store.Event{RunID: in.id, Item: store.NoItem, RunState: store.RunCancelled, Message: reason})
		s.after(func() { in.reply <- nil })
		s.onFail(func() { in.reply <- ErrStopped })
		return
	}
	// Not active here: unknown, or already over.
	go func() {
		_, err := s.st.RunGet(context.Background(), &store.RunGetParams{ID: in.id})
		if err == nil {
			err = ErrNotActive
		}
		in.reply <- err
	}()
}

// Done is closed when Run has returned.
func (s *Scheduler) Done() <-chan struct{} { return s.stopped }

// Changed returns a channel closed after the next commit that changes the
// run. Take it before reading the run, then wait on it: no change is missed.
func (s *Scheduler) Changed(runID int64) <-chan struct{} { return s.notify.wait(runID) }

// AgentInfo is a snapshot of an agent for the API.
type AgentInfo struct {
	store.Agent
	Running  int
	Draining bool
	// Pending says why a connected agent gets no work until an admin
	// approves what it claims.
	Pending string
	// CertSHA256 is the fingerprint of the client certificate that proved
	// its name, "" without one.
	CertSHA256 string
}

// Agents returns a snapshot of the agents the loop knows, ordered by name.
func (s *Scheduler) Agents(ctx context.Context) ([]AgentInfo, error) {
	reply := make(chan []AgentInfo, 1)
	if err := s.enqueue(ctx, agentsInput{reply: reply}); err != nil {
		return nil, err
	}
	select {
	case out := <-reply:
		return out, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.stopped:
		return nil, ErrStopped
	}
}

type agentsInput struct{ reply chan []AgentInfo }

func (in agentsInput) apply(s *Scheduler) {
	all := s.agents.All()
	out := make([]AgentInfo, 0, len(all))
	for _, a := range all {
		out = append(out, agentInfo(a))
	}
	in.reply <- out
}

func agentInfo(a *agentRT) AgentInfo {
	return AgentInfo{Agent: *a.Record(a.State()), Running: len(a.Attempts) + len(a.Zombies), Draining: a.Draining,
		Pending: a.Pending, CertSHA256: a.CertSHA256}
}

// Approved applies an agent's new approval (nil: revoked) to it while it
// is connected: it is pending from now on unless the approval covers what
// it claims. It returns the agent as it is after, and false when no agent
// of that name is connected. Placement follows at once.
func (s *Scheduler) Approved(ctx context.Context, name string, a *store.AgentApproval) (AgentInfo, bool, error) {
	reply := make(chan approvedReply, 1)
	if err := s.enqueue(ctx, approvedInput{name: name, approval: a, reply: reply}); err != nil {
		return AgentInfo{}, false, err
	}
	select {
	case out := <-reply:
		return out.info, out.ok, nil
	case <-ctx.Done():
		return AgentInfo{}, false, ctx.Err()
	case <-s.stopped:
		return AgentInfo{}, false, ErrStopped
	}
}

type approvedReply struct {
	info AgentInfo
	ok   bool
}

type approvedInput struct {
	name     string
	approval *store.AgentApproval
	reply    chan approvedReply
}

func (in approvedInput) apply(s *Scheduler) {
	a := s.agents.Get(in.name)
	if a == nil || a.Sess == nil {
		in.reply <- approvedReply{}
		return
	}
	was := a.Pending
	if in.approval == nil {
		a.Pending = fmt.Sprintf("approval revoked: an admin approves it again with 'baton agents approve %s'", a.Name)
	} else {
		a.Pending = dispatch.Uncovered(&dispatch.Hello{Name: a.Name, Labels: a.Labels, Slots: a.Slots, CertSHA256: a.CertSHA256}, in.approval)
	}
	if a.Pending != was {
		s.log.Info("agent approval changed", slog.String("agent", a.Name), slog.String("pending", a.Pending))
	}
	in.reply <- approvedReply{info: agentInfo(a), ok: true}
}
