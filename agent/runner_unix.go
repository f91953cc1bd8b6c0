//go:build unix

package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/batonhq/baton/agent/runner"
)

// openRunner sets a.runner: it attaches to the state directory's runner
// process, starting one when none runs. What the runner holds is adopted
// through attached before it returns.
func (a *Agent) openRunner(ctx context.Context) error {
	if a.localChildren {
		a.runner = newLocalRunner()
		return nil
	}
	rr := &remoteRunner{}
	// Set before attaching: attempts adopted while attaching use it.
	a.runner = rr
	_, err := runner.Open(ctx, runner.ClientConfig{
		StateDir:        a.cfg.StateDir,
		Command:         a.cfg.RunnerCommand,
		Env:             a.env,
		IdleExit:        a.runnerIdle,
		ProtocolVersion: a.runnerVersion,
		PollInterval:    a.runnerPoll,
		Logger:          a.log.With(slog.String("component", "runner")),
		Attached: func(c *runner.Client, at *runner.Attachment) {
			rr.set(c)
			a.attached(rr, at)
		},
	})
	return err
}

// remoteRunner runs children in the runner process.
type remoteRunner struct {
	mu sync.Mutex
	c  *runner.Client
}

// set records the client; it is first known in the Attached callback.
func (r *remoteRunner) set(c *runner.Client) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.c = c
}

func (r *remoteRunner) client() *runner.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c
}

func (r *remoteRunner) start(ctx context.Context, req *runner.StartRequest, sink runner.Sink) (proc, error) {
	p, err := r.client().Start(ctx, req, sink)
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (r *remoteRunner) instance() string { return r.client().Instance() }
func (r *remoteRunner) confirm(id int64) { r.client().Confirm(id) }
func (r *remoteRunner) renew(ids []int64, until time.Time, term time.Duration) {
	r.client().Renew(ids, until, term)
}
func (r *remoteRunner) close() { r.client().Close() }

// runnerExecutable is the default program of Config.RunnerCommand.
func runnerExecutable() (string, error) { return runner.Executable() }
