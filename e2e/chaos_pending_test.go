//go:build pending

package e2e

import "testing"

// TestCrashResumeAgentKilled is the full chaos test: batond killed three
// times and one agent killed once, at random points. See runChaos. Run it
// with `go test -tags pending`.
//
// The agent's side of it passes: an agent killed while starting children
// loses nothing (TestAgentKilledWhileStarting, and the crash-point tests
// of package agent). It still fails about one run in ten because of a
// batond bug: when the agent is killed while its Hello waits for a
// scheduler that is still loading after a restart, Scheduler.Hello
// returns the stream's context error but the queued hello is applied
// afterwards, admitting a session whose stream has ended, and Gone is
// never called for it (dispatch calls Gone only after Hello accepted). The
// name stays taken: the restarted agent is refused with ALREADY_EXISTS
// until --agent-timeout declares the stale session lost, and the children
// it re-adopted run a second time elsewhere.
func TestCrashResumeAgentKilled(t *testing.T) {
	t.Parallel()
	runChaos(t, true)
}
