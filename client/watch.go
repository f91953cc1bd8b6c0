package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// Terminal reports whether a run in state s has ended: nothing more happens
// in it until it is restarted.
func Terminal(s batonv1.RunState) bool {
	switch s {
	case batonv1.RunState_RUN_STATE_SUCCEEDED, batonv1.RunState_RUN_STATE_FAILED,
		batonv1.RunState_RUN_STATE_CANCELLED:
		return true
	}
	return false
}

// WatchRun streams the events of a run that come after afterCursor (0 for
// all of them), in cursor order. The stream is opened when the iteration
// starts and ends after the event that makes the run terminal.
//
// An error ends the iteration: it is yielded once with a nil event. Leaving
// the loop early (break) closes the stream. WatchRun does not reconnect; see
// [Client.WaitRun] for that.
func (c *Client) WatchRun(ctx context.Context, runID, afterCursor int64) iter.Seq2[*batonv1.RunEvent, error] {
	return func(yield func(*batonv1.RunEvent, error) bool) {
		// Cancelling the stream's context is the only way to release it
		// when the caller stops iterating before the server ends it.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		op := fmt.Sprintf("watch run %d", runID)
		stream, err := c.runs.WatchRun(ctx, &batonv1.WatchRunRequest{RunId: runID, AfterCursor: afterCursor})
		if err != nil {
			yield(nil, wrap(op, err))
			return
		}
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(nil, wrap(op, err))
				return
			}
			ev := resp.GetEvent()
			if ev == nil {
				continue
			}
			if !yield(ev, nil) {
				return
			}
		}
	}
}

// WaitOptions tunes [Client.WaitRun]. The zero value is ready to use.
type WaitOptions struct {
	// AfterCursor is the cursor of the last event already seen; WaitRun
	// reports only later events. Defaults to 0: every event.
	AfterCursor int64

	// FromRestart, when positive, skips the events of the run's earlier
	// generations: WaitRun reads past them without reporting them and
	// reports events from the run-state event of restart number
	// FromRestart on (a run's RestartCount numbers its latest restart).
	// Generations are counted from the start of the event log, so
	// AfterCursor must be 0 when FromRestart is set.
	FromRestart int32

	// OnEvent, when set, is called with each event of the run in cursor
	// order, exactly once even across reconnects. An error from it stops
	// WaitRun, which returns that error.
	OnEvent func(*batonv1.RunEvent) error

	// OnReconnect, when set, is called with the error that broke the watch
	// each time WaitRun is about to reconnect, before the backoff delay.
	OnReconnect func(err error)

	// MaxReconnects is how many times in a row WaitRun reconnects without
	// receiving an event before it gives up and returns the last error.
	// Defaults to 20.
	MaxReconnects int

	// MinBackoff and MaxBackoff bound the jittered exponential delay before
	// each reconnect. They default to 100ms and 5s; MaxBackoff is raised to
	// MinBackoff when it is smaller.
	MinBackoff, MaxBackoff time.Duration
}

// WaitRun waits for a run to reach a terminal state and returns the run as
// GetRun reports it then (with its task instances).
//
// It watches the run's events, reporting each to opts.OnEvent. When the
// stream breaks with codes.Unavailable (the control plane restarted, failed
// over, or the network dropped) or ends before the run is terminal, WaitRun
// reconnects after a jittered backoff and resumes after the last cursor it
// saw, so no event is reported twice or skipped. Any other error, or
// opts.MaxReconnects fruitless reconnects in a row, ends the wait with an
// error. opts may be nil.
//
// A restarted run has one generation of events per restart, each ending in
// a terminal run-state event. WaitRun follows a run into its later
// generations: watched from cursor 0 it reports every generation and
// returns when the latest one ends; a run restarted while WaitRun follows
// it is followed into the restart. Set opts.FromRestart to report only the
// latest generation.
func (c *Client) WaitRun(ctx context.Context, runID int64, opts *WaitOptions) (*batonv1.Run, error) {
	var o WaitOptions
	if opts != nil {
		o = *opts
	}
	switch {
	case o.FromRestart < 0:
		return nil, fmt.Errorf("wait for run %d: FromRestart %d is negative", runID, o.FromRestart)
	case o.FromRestart > 0 && o.AfterCursor != 0:
		return nil, fmt.Errorf("wait for run %d: FromRestart needs AfterCursor 0, got %d", runID, o.AfterCursor)
	}
	if o.MaxReconnects <= 0 {
		o.MaxReconnects = 20
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Second
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)

	w := &watcher{
		cursor:      o.AfterCursor,
		fromStart:   o.AfterCursor == 0,
		fromRestart: o.FromRestart,
		onEvent:     o.OnEvent,
	}
	failures := 0
	for {
		progressed, err := c.watchOnce(ctx, runID, w)
		var ee *eventError
		switch {
		case errors.As(err, &ee):
			return nil, ee.err
		case err == nil:
			// The stream ended as the contract says it does after a
			// terminal event, or the server closed it early (a graceful
			// shutdown). GetRun tells which.
			run, gerr := c.GetRun(ctx, runID)
			if gerr != nil && status.Code(gerr) != codes.Unavailable {
				return nil, gerr
			}
			if gerr == nil {
				switch w.next(run, progressed) {
				case waitDone:
					return run, nil
				case waitFollow:
					// Not a failure: the stream brought events and more
					// are known to follow.
					failures = 0
					continue
				}
			}
			err = gerr
			if err == nil {
				err = fmt.Errorf("watch run %d: stream ended while the run is %s", runID, run.GetState())
			}
		case status.Code(err) != codes.Unavailable:
			return nil, err
		}
		if progressed {
			failures = 0
		}
		failures++
		if failures > o.MaxReconnects {
			return nil, fmt.Errorf("wait for run %d: gave up after %d reconnects: %w", runID, o.MaxReconnects, err)
		}
		if o.OnReconnect != nil {
			o.OnReconnect(err)
		}
		if err := sleep(ctx, backoff(failures-1, o.MinBackoff, o.MaxBackoff)); err != nil {
			return nil, err
		}
	}
}

// watcher is WaitRun's view of a run's event log: how far it has read and
// which generation it is in.
type watcher struct {
	cursor int64
	// fromStart says the log was read from its first event, so restarts
	// counts every restart of the run.
	fromStart bool
	// restarts is how many restarts the events read so far show: run-state
	// events back to an active state after a terminal one.
	restarts int32
	// ended says the latest run-state event read was terminal.
	ended bool
	// fromRestart is the first generation whose events are reported.
	fromRestart int32
	onEvent     func(*batonv1.RunEvent) error
}

// read takes in one new event and reports it unless it belongs to a
// generation before w.fromRestart.
func (w *watcher) read(ev *batonv1.RunEvent) error {
	w.cursor = ev.GetCursor()
	if ev.GetTask() == "" && ev.GetRunState() != batonv1.RunState_RUN_STATE_UNSPECIFIED {
		terminal := Terminal(ev.GetRunState())
		if w.ended && !terminal {
			w.restarts++
		}
		w.ended = terminal
	}
	if w.restarts < w.fromRestart || w.onEvent == nil {
		return nil
	}
	if err := w.onEvent(ev); err != nil {
		return &eventError{err: err}
	}
	return nil
}

// Decisions of watcher.next.
const (
	waitDone   = iota // the run is over and every event was read
	waitFollow        // more events are known to follow: watch again now
	waitRetry         // the stream ended too early: reconnect with backoff
)

// next decides what to do after a stream ended without an error, given the
// run as GetRun reports it and whether the stream brought new events.
func (w *watcher) next(run *batonv1.Run, progressed bool) int {
	if !Terminal(run.GetState()) {
		if progressed && w.ended {
			// The stream ended after a terminal event and the run is
			// active again: it was restarted since.
			return waitFollow
		}
		return waitRetry
	}
	switch {
	case !progressed:
		// Nothing more came: the terminal event already read is the
		// run's last.
		return waitDone
	case !w.ended:
		// The server closed the stream before the terminal event.
		return waitFollow
	case run.GetRestartCount() == 0, w.fromStart && w.restarts >= run.GetRestartCount():
		return waitDone
	}
	// The terminal event read may end an earlier generation: a server
	// that ends each stream at a terminal event has more to send, and one
	// that has not ends the next stream at once.
	return waitFollow
}

// eventError carries an error from WaitOptions.OnEvent out of watchOnce, so
// WaitRun never mistakes it for a stream error.
type eventError struct{ err error }

func (e *eventError) Error() string { return e.err.Error() }
func (e *eventError) Unwrap() error { return e.err }

// watchOnce streams events after w.cursor until the stream ends, reading
// each into w. It reports whether any new event arrived.
func (c *Client) watchOnce(ctx context.Context, runID int64, w *watcher) (progressed bool, err error) {
	for ev, err := range c.WatchRun(ctx, runID, w.cursor) {
		if err != nil {
			return progressed, err
		}
		// A server replaying events we already have (it should not) must
		// not make the caller see them twice.
		if ev.GetCursor() <= w.cursor {
			continue
		}
		progressed = true
		if err := w.read(ev); err != nil {
			return progressed, err
		}
	}
	return progressed, nil
}

// backoff returns a random delay in [0, min(lo<<attempt, hi)]: full jitter,
// so many clients cut off by one control-plane restart do not all reconnect
// at the same instant.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	d := hi
	if attempt < 30 && lo<<attempt < hi {
		d = lo << attempt
	}
	return rand.N(d + 1)
}

// sleep waits for d or until ctx is done, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
