// Package runner is the long-lived process that owns baton-agent's
// children, so that they outlive the agent process.
//
// One runner runs per agent state directory and protocol version. The
// agent starts it (the same binary re-executed with a hidden "runner"
// argument, see [Main]) in a session of its own, talks to it over a Unix
// domain socket in the state directory, and asks it to start and signal
// children. The runner forks and execs each child in its own process
// group, forwards the child's output to the attached agent, enforces the
// child's timeout and attempt lease (StartRequest.Lease), and writes each exit durably to a record file before it
// tells the agent. The record stays until the agent confirms that it has
// journaled the outcome. Killing or upgrading the agent therefore does not
// touch the children: the next agent process attaches to the runner,
// re-adopts the children still running and collects the exits that
// happened meanwhile. The runner takes a start request over as it reads
// it, and only while the connection it came on is the attached one, so
// the welcome of a later connection lists every child the runner may
// still start: an attempt it does not list never starts (see
// [Client.Instance]).
//
// A runner exits on its own once no agent is attached, no child runs and
// every exit is confirmed, after [DefaultIdleExit]. An agent of another
// protocol version starts a runner of its own for new work; it reads the
// older runner's records (their format only ever gains fields) to report
// the older runner's children, and the older runner exits once they are
// done and confirmed.
//
// On Windows there is no runner: the agent runs children directly in job
// objects, and they end with the agent.
package runner

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/batonhq/baton/agent/internal/redact"
)

// ProtocolVersion is the version of the agent-runner protocol this
// package speaks. Runners of different versions keep apart: each version
// has its own directory, lock and socket in the state directory. Version
// 1 kept a file per child record (<id>.run, <id>.exit); version 2 keeps
// them in one record log. Version 3 added attempt leases: the start
// request's Lease and the renew frame, which a version 2 runner would
// refuse. Version 4 added the redaction of secrets
// (StartRequest.Redact, welcome.Redact), which a version 3 runner would
// ignore, leaking the values into the logs and records.
const ProtocolVersion = 4

// GraceLeft is the part of a child's kill grace left when its lease, which
// ended at deadline, is enforced at now. The control plane counts the grace
// from the lease's end, so a check that runs late (the host or the process
// was paused, a timer fired late) leaves the child only the rest: SIGKILL
// still comes no later than deadline + grace, and at once when that has
// passed.
func GraceLeft(deadline, now time.Time, grace time.Duration) time.Duration {
	return max(grace-now.Sub(deadline), 0)
}

const (
	// DefaultIdleExit is how long a runner with no agent attached, no
	// child running and no unconfirmed exit waits before it exits.
	DefaultIdleExit = 5 * time.Second
	// TailSize is how much of the end of each of a child's streams the
	// runner keeps for the exit record.
	TailSize = 8 << 10
	// ForwardCap is how much of each of a child's streams the runner
	// forwards to the agent; later output only counts and reaches the
	// tail.
	ForwardCap = 1 << 20
)

// Stream names one of a child's output streams.
type Stream uint8

const (
	// Stdout is the child's standard output.
	Stdout Stream = 1
	// Stderr is the child's standard error.
	Stderr Stream = 2
)

// Sink receives a child's output as the runner forwards it: offset is
// where data starts within the stream. Offsets grow; a gap means output
// was produced while no agent was attached and only reached the tail.
// Output is delivered from one goroutine; Output may block, which holds
// back the child's output (and, while it blocks, other children's).
type Sink interface {
	Output(stream Stream, offset int64, data []byte)
}

// StartRequest asks the runner to start one child.
type StartRequest struct {
	// ID is the attempt id; the runner holds at most one child per id.
	ID int64 `json:"id"`
	// Path is the executable, already resolved; empty means Argv[0]. A
	// relative path is taken relative to Dir.
	Path string `json:"path,omitempty"`
	// Argv is the child's command line; Argv[0] is what the child sees.
	Argv []string `json:"argv"`
	// Env is the child's whole environment.
	Env []string `json:"env"`
	// Dir is the child's working directory. It should be absolute: the
	// runner's own working directory is "/".
	Dir string `json:"dir,omitempty"`
	// Timeout, when positive, makes the runner stop the child's tree
	// (SIGTERM, SIGKILL after Grace) once it has run that long. It holds
	// while no agent is attached.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Grace is the time between SIGTERM and SIGKILL for the timeout.
	Grace time.Duration `json:"grace,omitempty"`
	// Fsync makes the runner flush the exit record to stable storage.
	Fsync bool `json:"fsync,omitempty"`
	// Redact are the secrets in Env: the runner replaces their values in
	// the child's output (what it forwards and the tails it records) with
	// [secret:NAME]. They travel over the runner's socket only and are
	// kept in memory, never in a record.
	Redact []redact.Secret `json:"redact,omitempty"`
	// Lease, when positive, is how long the child's attempt lease lasts
	// from when the runner reads the request: once it has passed without a
	// renewal (Client.Renew) the runner stops the child's tree (SIGTERM,
	// SIGKILL after Grace) and its exit record says LeaseExpired. It holds
	// while no agent is attached. Zero: no lease, the child is never
	// stopped for it (unless a renewal gives it one). The agent sends the
	// time remaining, not a deadline, so that no clock is shared: the
	// runner's deadline is later than the agent's by the socket's delay.
	Lease time.Duration `json:"lease,omitempty"`
	// LeaseTerm is the control plane's lease length, kept for the exit
	// record (Record.LeaseTerm).
	LeaseTerm time.Duration `json:"lease_term,omitempty"`
	// LeaseUntil, when set, is when the lease ends on this process's
	// clock, and Lease is ignored: Client.Start turns it into Lease just
	// before it writes the request, so that time spent waiting for the
	// runner does not lengthen the lease. A lease that has passed by then
	// starts nothing (ErrLeaseExpired).
	LeaseUntil time.Time `json:"-"`
	// Instance, when set, names the only runner process the request may
	// go to (Client.Instance): attached to another, Client.Start sends
	// nothing and returns ErrUnavailable. The agent journals an attempt
	// with the runner it is handed to; this keeps the two the same.
	Instance string `json:"-"`
}

func (r *StartRequest) validate() error {
	if r.ID <= 0 {
		return fmt.Errorf("start: id must be positive, got %d", r.ID)
	}
	if len(r.Argv) == 0 || r.Argv[0] == "" {
		return errors.New("start: argv is empty")
	}
	if r.Timeout < 0 || r.Grace < 0 || r.Lease < 0 || r.LeaseTerm < 0 {
		return errors.New("start: timeout, grace and lease must not be negative")
	}
	return nil
}

// Record is one child as the runner keeps it on disk, in the record log
// of its version's directory: a record when the child has started, another
// when it exited, and a confirmation when the agent has journaled the
// exit (see records.go). Agents of other versions read these records, so
// fields are only ever added.
type Record struct {
	// ID is the attempt id.
	ID int64 `json:"id"`
	// Pid is the child's process id; it also names its process group.
	Pid int `json:"pid"`
	// PidStart is the child's start time in clock ticks after boot
	// (Linux), and BootID the boot it belongs to: with Pid they tell the
	// child from a later process that reuses its pid. Zero and empty
	// where unknown.
	PidStart uint64 `json:"pid_start,omitempty"`
	BootID   string `json:"boot_id,omitempty"`
	// Start is when the child started.
	Start time.Time `json:"start"`
	// Timeout and Grace are the StartRequest's.
	Timeout time.Duration `json:"timeout,omitempty"`
	Grace   time.Duration `json:"grace,omitempty"`

	// Exited says the child has exited; the fields below are set then.
	Exited bool      `json:"exited,omitempty"`
	End    time.Time `json:"end,omitzero"`
	// ExitCode is the child's exit code, -1 when a signal ended it.
	ExitCode int `json:"exit_code"`
	// Err says how the child ended when that was not a clean exit 0, as
	// "exit status 3" or "signal: killed".
	Err string `json:"err,omitempty"`
	// WaitDelay says a process outside the child's group kept its output
	// open after it exited, and the rest of the output was not read.
	WaitDelay bool `json:"wait_delay,omitempty"`
	// TimedOut says the runner stopped the child because its timeout
	// expired before the agent asked for anything.
	TimedOut bool `json:"timed_out,omitempty"`
	// Reason is what the agent gave with the first signal it asked for.
	Reason string `json:"reason,omitempty"`
	// LeaseExpired says the runner stopped the child because its lease
	// (StartRequest.Lease, Client.Renew) ran out before the agent asked
	// for anything (self-fencing); LeaseExpiredAt is when, and LeaseTerm
	// the lease length the agent last gave (zero if unknown).
	LeaseExpired   bool          `json:"lease_expired,omitempty"`
	LeaseExpiredAt time.Time     `json:"lease_expired_at,omitzero"`
	LeaseTerm      time.Duration `json:"lease_term,omitempty"`
	// StdoutTail and StderrTail are the last TailSize bytes of each
	// stream; StdoutBytes and StderrBytes count all of it.
	StdoutTail  []byte `json:"stdout_tail,omitempty"`
	StderrTail  []byte `json:"stderr_tail,omitempty"`
	StdoutBytes int64  `json:"stdout_bytes,omitempty"`
	StderrBytes int64  `json:"stderr_bytes,omitempty"`
}

// Result is how a child ended, as the agent learns it.
type Result struct {
	// Record is the exit record. Only the ID is set when StartErr or Lost
	// is.
	Record
	// StartErr says the child could not be started.
	StartErr string
	// Lost says the child's outcome is unknown, and why: its runner was
	// killed.
	Lost string
}

// MaxInstanceLen bounds the runner identities Client.Instance returns.
const MaxInstanceLen = 64

// ErrUnavailable is returned when a start request did not reach a runner:
// nothing was started.
var ErrUnavailable = errors.New("runner unavailable; nothing was started")

// ErrLeaseExpired is returned by Client.Start when the request's lease
// (StartRequest.LeaseUntil) ended before the request could be sent:
// nothing was started.
var ErrLeaseExpired = errors.New("the attempt's lease ended before its start request was sent; nothing was started")

// LostRunnerKilled is Result.Lost for the children of a runner that died.
const LostRunnerKilled = "outcome unknown: the agent's runner was killed"

// Layout of a version's directory inside the state directory.
const (
	lockName    = "lock"
	sockName    = "sock"
	sockDirName = "sockdir" // holds the socket's directory when the path would be too long
	logName     = "log"     // the runner's own log (text)
	// recordsName is the record log of the runner's children (version 2
	// on), and confirmedName where agents of other versions confirm exits
	// they collected from it.
	recordsName   = "records"
	confirmedName = "confirmed"
	// exitedName holds the instance and boot id of the last runner of the
	// version that exited on its own with nothing left it had taken over
	// (version 2 on), separated by a space.
	exitedName = "exited"
	// attDirName holds the record files of a version 1 runner.
	attDirName = "att"
	// maxSockPath is below the smallest sun_path of the supported
	// systems (104 bytes on macOS, 108 on Linux, each with its NUL).
	maxSockPath = 100
)

// versionDir is where the runner of protocol version v keeps its files.
// The name is short: the socket path must fit in sun_path.
func versionDir(stateDir string, v int) string {
	return filepath.Join(stateDir, "r"+strconv.Itoa(v))
}

// versionOf parses a version directory's name.
func versionOf(name string) (int, bool) {
	s, ok := strings.CutPrefix(name, "r")
	if !ok {
		return 0, false
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 || strconv.Itoa(v) != s {
		return 0, false
	}
	return v, true
}

// The runners of protocol version 1 kept each child's record in a file of
// its own in the attempt directory: <id>.run once the child had started,
// <id>.exit once it had exited (then <id>.run went), both removed when the
// exit was confirmed. An agent still reads them to collect the children
// of such a runner.
const (
	runSuffix  = ".run"
	exitSuffix = ".exit"
)

func runPath(attDir string, id int64) string {
	return filepath.Join(attDir, strconv.FormatInt(id, 10)+runSuffix)
}

func exitPath(attDir string, id int64) string {
	return filepath.Join(attDir, strconv.FormatInt(id, 10)+exitSuffix)
}

// removeRecord deletes id's record files; missing ones are not an error.
func removeRecord(attDir string, id int64) error {
	return errors.Join(
		ignoreNotExist(os.Remove(exitPath(attDir, id))),
		ignoreNotExist(os.Remove(runPath(attDir, id))))
}

func ignoreNotExist(err error) error {
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// readRecords loads every record file in attDir. Temp files left by a
// crash are removed; bad files are returned as errors next to the good
// records.
func readRecords(attDir string) (map[int64]*Record, []error) {
	entries, err := os.ReadDir(attDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, []error{fmt.Errorf("read %s: %w", attDir, err)}
	}
	recs := make(map[int64]*Record)
	var errs []error
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(attDir, name)
		if strings.HasSuffix(name, ".tmp") {
			_ = os.Remove(path)
			continue
		}
		idText, suffix, ok := strings.Cut(name, ".")
		id, err := strconv.ParseInt(idText, 10, 64)
		if !ok || err != nil || id <= 0 || ("."+suffix != runSuffix && "."+suffix != exitSuffix) {
			continue
		}
		if old, seen := recs[id]; seen && old.Exited {
			continue // the exit record wins over the running one
		}
		rec, err := readRecordFile(path, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if rec.Exited != ("."+suffix == exitSuffix) {
			errs = append(errs, fmt.Errorf("record %s: exited is %v", path, rec.Exited))
			continue
		}
		if old, seen := recs[id]; !seen || !old.Exited {
			recs[id] = rec
		}
	}
	return recs, errs
}

func readRecordFile(path string, id int64) (*Record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read record %d: %w", id, err)
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("decode record %s: %w", path, err)
	}
	if rec.ID != id {
		return nil, fmt.Errorf("record %s names attempt %d", path, rec.ID)
	}
	return &rec, nil
}

// writeFileAtomic writes data to a temp file next to path and renames it
// over path. With fsync the data and the rename reach stable storage.
func writeFileAtomic(path string, data []byte, fsync bool) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if fsync {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	if fsync {
		d, err := os.Open(dir)
		if err != nil {
			return err
		}
		defer func() { _ = d.Close() }() // opened only to sync: Sync reports the error
		return d.Sync()
	}
	return nil
}

// appendTail appends p to tail, keeping at least the last TailSize bytes
// and compacting only at twice that, so a write costs O(len(p)) amortised.
func appendTail(tail, p []byte) []byte {
	if len(p) >= TailSize {
		return append(tail[:0], p[len(p)-TailSize:]...)
	}
	if len(tail)+len(p) > 2*TailSize {
		tail = append(tail[:0], tail[len(tail)-(TailSize-len(p)):]...)
	}
	return append(tail, p...)
}

// lastBytes returns a copy of the last TailSize bytes of tail.
func lastBytes(tail []byte) []byte {
	if len(tail) > TailSize {
		tail = tail[len(tail)-TailSize:]
	}
	return append([]byte(nil), tail...)
}
