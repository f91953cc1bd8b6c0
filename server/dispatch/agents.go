package dispatch

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

// Agent is an agent the control plane knows: connected, or holding attempts
// while it may still reconnect. A is the attempt type of the registry's
// owner (the scheduler), whose live attempts on the agent Attempts holds.
// An Agent belongs to the goroutine that owns its registry.
type Agent[A comparable] struct {
	Name     string
	Sess     *Session // nil while disconnected
	BootID   string
	Labels   map[string]string
	Slots    int
	Version  string
	Hostname string
	OS       string
	Draining bool
	// Pending says why the agent gets no work until an admin approves
	// what it claims; "" when it may work.
	Pending string
	// CertSHA256 is the fingerprint of the certificate that proved its
	// name on its current session, "" without one.
	CertSHA256 string
	// Lost is set once the agent was silent for the agent timeout: no new
	// work goes to it until it says Hello again.
	Lost        bool
	LastSeen    time.Time
	ConnectedAt time.Time
	// Attempts are the live attempts placed on this agent.
	Attempts map[A]struct{}
	// Zombies are attempts the agent runs that no longer decide anything
	// (replaced after a loss); they still use its slots.
	Zombies map[int64]struct{}
	// LastUsed orders agents for placement: least recently used first.
	LastUsed uint64
	// Seq is the latest message of the current session the attempts'
	// leases can be measured from: 0 for its Hello, then each heartbeat's.
	Seq uint64
	// RenewedAt is when the agent's leases were last renewed (its Hello or
	// latest heartbeat).
	RenewedAt time.Time
}

// Usable reports whether new work may be placed on the agent.
func (a *Agent[A]) Usable() bool { return a.Sess != nil && !a.Draining && !a.Lost && a.Pending == "" }

// Free is how many more children the agent may run.
func (a *Agent[A]) Free() int { return a.Slots - len(a.Attempts) - len(a.Zombies) }

// FencesFrozen reports whether the agent's children are stopped when their
// leases run out even while the agent process itself is stopped or hung:
// on Unix its runner, a process of its own, enforces the leases. On Windows
// the agent runs its children itself and enforces them with its own timers.
func (a *Agent[A]) FencesFrozen() bool { return a.OS != "windows" }

// Record is the agent as the store keeps it, in state.
func (a *Agent[A]) Record(state store.AgentState) *store.Agent {
	return &store.Agent{
		Name: a.Name, Labels: a.Labels, Slots: a.Slots, Version: a.Version, Hostname: a.Hostname,
		OS: a.OS, State: state, ConnectedAt: a.ConnectedAt, LastSeenAt: a.LastSeen,
	}
}

// State is the agent's state for the API: lost, connected or
// disconnected.
func (a *Agent[A]) State() store.AgentState {
	switch {
	case a.Lost:
		return store.AgentLost
	case a.Sess != nil:
		return store.AgentConnected
	}
	return store.AgentDisconnected
}

// Agents is the registry of agents: who is connected, admitting a Hello,
// a session's end, liveness and placement. It is not safe for concurrent
// use; the scheduler's loop owns it.
type Agents[A comparable] struct {
	m   map[string]*Agent[A]
	seq uint64
	// cands and candAgents are Pick's reusable buffers.
	cands      []Candidate
	candAgents []*Agent[A]
}

// NewAgents returns an empty registry.
func NewAgents[A comparable]() *Agents[A] { return &Agents[A]{m: map[string]*Agent[A]{}} }

// Get returns the agent named name, or nil.
func (r *Agents[A]) Get(name string) *Agent[A] { return r.m[name] }

// Ensure returns the agent named name, creating a disconnected one last
// heard from at now (an agent whose attempts were loaded from the store).
func (r *Agents[A]) Ensure(name string, now time.Time) *Agent[A] {
	a := r.m[name]
	if a == nil {
		a = &Agent[A]{Name: name, Attempts: map[A]struct{}{}, Zombies: map[int64]struct{}{}, LastSeen: now}
		r.m[name] = a
	}
	return a
}

// Admit makes sess the agent's session. A live agent's name is refused
// with ErrNameTaken unless the Hello carries the boot id of that session's
// agent process (it reconnected before its old stream ended): that stale
// session is closed with ErrReplaced. The caller re-attaches the agent's
// attempts.
func (r *Agents[A]) Admit(sess *Session, h *Hello, now time.Time) (*Agent[A], error) {
	a := r.m[h.Name]
	if a != nil && a.Sess != nil {
		if h.BootID == "" || h.BootID != a.BootID {
			return nil, fmt.Errorf("an agent named %q is already connected: %w", h.Name, ErrNameTaken)
		}
		a.Sess.Close(ErrReplaced)
	}
	a = r.Ensure(h.Name, now)
	a.Sess, a.BootID = sess, h.BootID
	a.Seq, a.RenewedAt = 0, now
	a.Labels, a.Slots, a.Version, a.Hostname, a.OS = h.Labels, h.Slots, h.Version, h.Hostname, h.OS
	a.Draining, a.Lost = false, false
	a.Pending, a.CertSHA256 = h.Pending, h.CertSHA256
	a.LastSeen, a.ConnectedAt = now, now
	return a, nil
}

// Gone forgets sess as its agent's session and returns the agent, or nil
// when sess is not its agent's current session.
func (r *Agents[A]) Gone(sess *Session) *Agent[A] {
	a := r.m[sess.Name]
	if a == nil || a.Sess != sess {
		return nil
	}
	a.Sess = nil
	return a
}

// Current returns the agent whose current session is sess, or nil for a
// stale session (whose messages are ignored: the agent repeats what
// matters).
func (r *Agents[A]) Current(sess *Session) *Agent[A] {
	a := r.m[sess.Name]
	if a == nil || a.Sess != sess {
		return nil
	}
	return a
}

// Silent marks lost every agent not heard from for longer than timeout,
// closes its session, and returns those agents.
func (r *Agents[A]) Silent(now time.Time, timeout time.Duration) []*Agent[A] {
	var out []*Agent[A]
	for _, a := range r.m {
		if a.Lost || now.Sub(a.LastSeen) <= timeout {
			continue
		}
		a.Lost = true
		if a.Sess != nil {
			a.Sess.Close(Unavailable("agent timed out"))
			a.Sess = nil
		}
		clear(a.Zombies)
		out = append(out, a)
	}
	slices.SortFunc(out, func(x, y *Agent[A]) int { return cmp.Compare(x.Name, y.Name) })
	return out
}

// Pick chooses a usable agent with a free slot for sel by the placement
// rule of the package function Pick, or returns nil.
func (r *Agents[A]) Pick(sel job.Selector) *Agent[A] {
	r.cands = r.cands[:0]
	r.candAgents = r.candAgents[:0]
	for _, a := range r.m {
		if !a.Usable() {
			continue
		}
		r.cands = append(r.cands, Candidate{Name: a.Name, Labels: a.Labels, Free: a.Free(), LastUsed: a.LastUsed})
		r.candAgents = append(r.candAgents, a)
	}
	if i := Pick(r.cands, sel); i >= 0 {
		return r.candAgents[i]
	}
	return nil
}

// Use records that work was just placed on a, for least-recently-used
// ties.
func (r *Agents[A]) Use(a *Agent[A]) {
	r.seq++
	a.LastUsed = r.seq
}

// Connected counts the agents with a live session.
func (r *Agents[A]) Connected() int {
	n := 0
	for _, a := range r.m {
		if a.Sess != nil {
			n++
		}
	}
	return n
}

// All returns every agent, ordered by name.
func (r *Agents[A]) All() []*Agent[A] { return r.Where(nil) }

// Where returns the agents keep accepts (every one for nil), ordered by
// name; it allocates only for those.
func (r *Agents[A]) Where(keep func(*Agent[A]) bool) []*Agent[A] {
	var out []*Agent[A]
	for _, a := range r.m {
		if keep == nil || keep(a) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(x, y *Agent[A]) int { return cmp.Compare(x.Name, y.Name) })
	return out
}
