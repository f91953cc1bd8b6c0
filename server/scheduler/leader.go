package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/batonhq/baton/server/store"
)

// Leadership and fencing. One batond schedules: the holder of the leader
// lease in the store. Every commit checks the lease's token in its
// transaction (batch.go), so a deposed leader's writes fail; runs are
// created under the same check (CreateRun).

// leaseName is the leader lease the scheduler holds.
const leaseName = "scheduler"

// Settled is closed once the scheduler has first tried to take the leader
// lease: after it, Leader tells whether this process schedules.
func (s *Scheduler) Settled() <-chan struct{} { return s.settled }

func (s *Scheduler) markSettled() { s.settledOnce.Do(func() { close(s.settled) }) }

// notLeading is the error a call that needs the leader gets.
func (s *Scheduler) notLeading() error {
	if err := s.Status().Error(); err != nil {
		return err
	}
	// Between losing the lease and recording why.
	return fmt.Errorf("this batond is not leading right now: %w", store.ErrNotLeader)
}

// Leader reports whether this process holds the leader lease and schedules.
func (s *Scheduler) Leader() bool { return s.leader.Load() }

// acquire takes the leader lease, waiting while another holder has it.
func (s *Scheduler) acquire(ctx context.Context) error {
	waiting := false
	defer s.markSettled()
	for {
		lease, err := s.st.LeaderAcquire(ctx, &store.LeaderAcquireParams{Name: leaseName, Holder: s.cfg.Holder, TTL: s.cfg.LeaseTTL})
		if err == nil {
			s.lease = lease
			s.token.Store(lease.Token)
			s.leader.Store(true)
			s.health.set(RoleLeader, nil)
			s.markSettled()
			s.log.InfoContext(ctx, "leader lease acquired", slog.String("holder", s.cfg.Holder), slog.Int64("token", lease.Token))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, store.ErrNotLeader) {
			s.health.set(RoleStandby, nil)
		} else {
			s.health.set(RoleStoreUnavailable, err)
		}
		s.markSettled()
		if !waiting {
			waiting = true
			if errors.Is(err, store.ErrNotLeader) {
				s.log.InfoContext(ctx, "another batond holds the leader lease; standing by", slog.String("holder", s.cfg.Holder))
			} else {
				s.log.ErrorContext(ctx, "cannot take the leader lease; retrying", slog.Any("error", err))
			}
		}
		select {
		case <-time.After(s.cfg.LeaseTTL / 3):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// renew extends the leader lease; it runs on the loop every third of the
// TTL. A lease that cannot be renewed before it would expire ends the
// loop, so this process stops scheduling before anyone else may start.
func (s *Scheduler) renew() error {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.LeaseTTL/3)
	defer cancel()
	lease, err := s.st.LeaderAcquire(ctx, &store.LeaderAcquireParams{Name: leaseName, Holder: s.cfg.Holder, TTL: s.cfg.LeaseTTL})
	switch {
	case err == nil && lease.Token == s.lease.Token:
		s.lease = lease
		return nil
	case err == nil:
		// The lease had expired and was taken anew: someone may have led
		// in between, so start over from the store.
		s.lease = lease
		s.token.Store(lease.Token)
		return fmt.Errorf("leader lease expired and was re-taken with token %d: %w", lease.Token, store.ErrNotLeader)
	case errors.Is(err, store.ErrNotLeader):
		return err
	}
	if s.lease.ExpiresAt.Sub(s.now()) < s.cfg.LeaseTTL/3 {
		// Not deposed: the store fails. Stop scheduling before anyone else
		// may start, and say why.
		return fmt.Errorf("cannot renew the leader lease before it expires: %w", err)
	}
	s.log.Warn("leader lease renewal failed; retrying", slog.Any("error", err))
	return nil
}

// releaseLease gives the lease up so a standby can take over at once.
func (s *Scheduler) releaseLease() {
	if s.lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.st.LeaderRelease(ctx, &store.LeaderReleaseParams{Name: leaseName, Holder: s.cfg.Holder, Token: s.lease.Token}); err != nil {
		s.log.Warn("cannot release the leader lease", slog.Any("error", err))
	}
}
