//go:build windows

package agent

import (
	"context"
	"os"
)

// openRunner sets a.runner to the local runner: on Windows the agent runs children
// itself, each in a job object that is closed, killing the child's tree,
// when the agent process ends. Children therefore do not outlive the
// agent there; the runner process that lets them do so on Unix is not
// built for Windows.
func (a *Agent) openRunner(context.Context) error {
	a.runner = newLocalRunner()
	return nil
}

// runnerExecutable is the default program of Config.RunnerCommand, which
// Windows does not use.
func runnerExecutable() (string, error) { return os.Executable() }
