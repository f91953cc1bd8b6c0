//go:build unix

package runner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Start asks the runner to start a child and waits until it has started.
// Output goes to sink. It returns ErrUnavailable (wrapped) when the
// request did not reach a runner (or req.Instance names another runner
// than the one attached), another error when the child could not be
// started. When the runner was lost while starting the child, the
// returned Proc is done already with Result.Lost set.
func (c *Client) Start(ctx context.Context, req *StartRequest, sink Sink) (*Proc, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	p := newProc(c, req.ID)
	p.sink, p.grace = sink, req.Grace
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, fmt.Errorf("%w: client closed", ErrUnavailable)
		}
		if c.conn != nil {
			break
		}
		wait := c.connected
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		}
	}
	if _, ok := c.procs[req.ID]; ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("runner: attempt %d is already running", req.ID)
	}
	if req.Instance != "" && req.Instance != c.instance {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: the request is for runner %s, the client is attached to another", ErrUnavailable, req.Instance)
	}
	sent := req
	var sentAt time.Time
	if !req.LeaseUntil.IsZero() {
		// Measured now, right before the write, not when the agent
		// decided to start; the runner takes off what the request spends
		// on its way (leaseLeft).
		now := time.Now()
		remaining := req.LeaseUntil.Sub(now)
		if remaining <= 0 {
			c.mu.Unlock()
			return nil, ErrLeaseExpired
		}
		withLease := *req
		withLease.Lease = remaining
		sent, sentAt = &withLease, now.Round(0)
	}
	msg := c.startMsg(sent, c.conn)
	msg.SentAt = sentAt
	b, err := encodeJSON(&frame{Start: msg})
	if err != nil {
		c.mu.Unlock()
		return nil, err
	}
	c.procs[req.ID] = p
	// Written under mu, so a reattach sees either no request or a sent
	// one.
	err = c.conn.write(b)
	if err != nil {
		delete(c.procs, req.ID)
	}
	c.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	<-p.startedCh
	p.mu.Lock()
	startErr, unavailable, leaseExpired := p.startErr, p.unavailable, p.leaseExpired
	p.mu.Unlock()
	switch {
	case unavailable:
		return nil, fmt.Errorf("%w: the runner connection broke before the request was read", ErrUnavailable)
	case leaseExpired:
		return nil, ErrLeaseExpired
	case startErr != "":
		return nil, errors.New(startErr)
	}
	return p, nil
}

// startMsg returns req as sent on cc: when the runner's environment is
// the base environment and req's starts with it, only the rest is sent.
func (c *Client) startMsg(req *StartRequest, cc *cconn) *startMsg {
	base := c.baseEnv
	if !cc.envBase || len(req.Env) < len(base) || !slices.Equal(req.Env[:len(base)], base) {
		return &startMsg{StartRequest: req}
	}
	short := *req
	short.Env = req.Env[len(base):]
	return &startMsg{StartRequest: &short, EnvBase: true}
}
