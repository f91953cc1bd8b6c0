package scheduler

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/batonhq/baton/server/store"
)

// ErrStoreUnavailable is returned while the scheduler cannot use its store
// (a full disk, a lost database connection): it neither leads nor stands
// by, and takes the leader lease again once the store answers.
var ErrStoreUnavailable = errors.New("state store unavailable")

// Role is what a batond's scheduler is doing.
type Role string

// Roles.
const (
	// RoleStarting: the scheduler has not yet tried to take the lease.
	RoleStarting Role = "starting"
	// RoleLeader: this process holds the leader lease and schedules.
	RoleLeader Role = "leader"
	// RoleStandby: another process holds the leader lease.
	RoleStandby Role = "standby"
	// RoleStoreUnavailable: the store fails; Status.Err says how.
	RoleStoreUnavailable Role = "store_unavailable"
)

// Status is a snapshot of the scheduler's role.
type Status struct {
	Role Role
	// Err is the store's error while the store is unavailable.
	Err error
	// Since is when the scheduler entered this role.
	Since time.Time
}

// Ready reports whether this process takes work: it leads.
func (st Status) Ready() bool { return st.Role == RoleLeader }

// Error returns the error an API call refused for this status gets, or nil
// when the scheduler leads.
func (st Status) Error() error {
	switch st.Role {
	case RoleLeader:
		return nil
	case RoleStoreUnavailable:
		return fmt.Errorf("%w since %s: %w", ErrStoreUnavailable, st.Since.UTC().Format(time.RFC3339), st.Err)
	case RoleStandby:
		return fmt.Errorf("this batond is standing by while another holds the leader lease: %w", store.ErrNotLeader)
	}
	return fmt.Errorf("this batond is starting and has not taken the leader lease yet: %w", store.ErrNotLeader)
}

// health holds the scheduler's status for readers on any goroutine.
type health struct {
	mu      sync.Mutex
	st      Status
	changed chan struct{}
	// onChange, when set, is called with each new status (metrics).
	onChange func(Status)
}

func newHealth() *health {
	return &health{st: Status{Role: RoleStarting, Since: time.Now()}, changed: make(chan struct{})}
}

// set records a role; the same role with the same error changes nothing.
func (h *health) set(role Role, err error) {
	h.mu.Lock()
	if h.st.Role == role && errors.Is(h.st.Err, err) && (err == nil) == (h.st.Err == nil) {
		h.mu.Unlock()
		return
	}
	h.st = Status{Role: role, Err: err, Since: time.Now()}
	st, fn := h.st, h.onChange
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
	if fn != nil {
		fn(st)
	}
}

func (h *health) get() (Status, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st, h.changed
}

// Status returns the scheduler's current role.
func (s *Scheduler) Status() Status {
	st, _ := s.health.get()
	return st
}

// StatusChanged returns a channel closed at the next change of Status.
// Take it before reading Status, then wait on it: no change is missed.
func (s *Scheduler) StatusChanged() <-chan struct{} {
	_, ch := s.health.get()
	return ch
}
