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
func (c *Client) WaitRun(ctx context.Context, runID int64, opts *WaitOptions) (*batonv1.Run, error) {
	var o WaitOptions
	if opts != nil {
		o = *opts
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

	cursor := o.AfterCursor
	failures := 0
	for {
		progressed, err := c.watchOnce(ctx, runID, &cursor, o.OnEvent)
		var ee *eventError
		switch {
		case errors.As(err, &ee):
			return nil, ee.err
		case err == nil:
			// The stream ended as the contract says it does after the
			// terminal event, or the server closed it early (a graceful
			// shutdown). GetRun tells which.
			run, gerr := c.GetRun(ctx, runID)
			if gerr != nil && status.Code(gerr) != codes.Unavailable {
				return nil, gerr
			}
			if gerr == nil && Terminal(run.GetState()) {
				return run, nil
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

// eventError carries an error from WaitOptions.OnEvent out of watchOnce, so
// WaitRun never mistakes it for a stream error.
type eventError struct{ err error }

func (e *eventError) Error() string { return e.err.Error() }
func (e *eventError) Unwrap() error { return e.err }

// watchOnce streams events after *cursor until the stream ends, advancing
// *cursor. It reports whether any new event arrived.
func (c *Client) watchOnce(ctx context.Context, runID int64, cursor *int64, onEvent func(*batonv1.RunEvent) error) (progressed bool, err error) {
	for ev, err := range c.WatchRun(ctx, runID, *cursor) {
		if err != nil {
			return progressed, err
		}
		// A server replaying events we already have (it should not) must
		// not make the caller see them twice.
		if ev.GetCursor() <= *cursor {
			continue
		}
		*cursor = ev.GetCursor()
		progressed = true
		if onEvent != nil {
			if err := onEvent(ev); err != nil {
				return progressed, &eventError{err: err}
			}
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
