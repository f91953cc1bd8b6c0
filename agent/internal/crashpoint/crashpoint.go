// Package crashpoint names the steps of handing an attempt from the agent
// to its runner at which tests stop a process, and lets them do so.
//
// The agent and the runner call Reach at each point. Reach does nothing
// unless a hook is installed with Set, which only test binaries do (from
// their TestMain, when they run as an agent or a runner process for a
// test). A hook may kill the process at the point, or hold it there until
// the test lets it go on, so that a test can stop a process exactly
// between two steps of the protocol.
package crashpoint

import "sync/atomic"

// The points, in the order an attempt passes them.
const (
	// AgentAccepted: the agent took a StartTask on; nothing is journaled.
	AgentAccepted = "agent-accepted"
	// AgentBegun: the attempt is journaled as started; its start request
	// is not sent to the runner yet.
	AgentBegun = "agent-begun"
	// RunnerReceived: the runner has read the start request and has not
	// taken it over yet.
	RunnerReceived = "runner-received"
	// RunnerForking: the runner has taken the request over and not forked
	// the child yet.
	RunnerForking = "runner-forking"
	// AgentStarted: the runner told the agent that the child runs; the
	// control plane has not been told.
	AgentStarted = "agent-started"
	// AgentFinished: the outcome is journaled; it is neither reported nor
	// confirmed to the runner.
	AgentFinished = "agent-finished"
)

var hook atomic.Pointer[func(point string, id int64)]

// Set installs fn, called by every later Reach; nil removes the hook.
func Set(fn func(point string, id int64)) {
	if fn == nil {
		hook.Store(nil)
		return
	}
	hook.Store(&fn)
}

// Reach says that attempt id has reached point. It calls the installed
// hook, if any, which may block or end the process; without one it costs
// an atomic load.
func Reach(point string, id int64) {
	if h := hook.Load(); h != nil {
		(*h)(point, id)
	}
}
