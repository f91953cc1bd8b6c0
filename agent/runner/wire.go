package runner

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/batonhq/baton/agent/internal/redact"
)

// The protocol is a sequence of frames in each direction: a 4-byte
// big-endian length, then that many bytes: a kind byte and the body.
// Control messages are JSON (kindJSON, one frame struct with one field
// set); child output, the bulk of the traffic, is binary (kindOutput:
// attempt id, stream, offset, data). The agent opens with a hello
// carrying its protocol version; the runner answers with a welcome or an
// error and closes.
const (
	kindJSON   byte = 'j'
	kindOutput byte = 'o'
	// maxFrame bounds a frame; a start request's argv and environment are
	// the largest messages.
	maxFrame = 16 << 20
	// outputHeader is the size of an output frame's body before the data.
	outputHeader = 8 + 1 + 8
)

// frame is one control message; exactly one field is set.
type frame struct {
	Hello   *hello    `json:"hello,omitempty"`
	Welcome *welcome  `json:"welcome,omitempty"`
	Start   *startMsg `json:"start,omitempty"`
	Started *started  `json:"started,omitempty"`
	Exit    *Record   `json:"exit,omitempty"`
	Signal  *signal   `json:"signal,omitempty"`
	Confirm *confirm  `json:"confirm,omitempty"`
	Renew   *renew    `json:"renew,omitempty"`
	// Error ends the connection: the runner refuses the agent.
	Error string `json:"error,omitempty"`
}

// hello opens a connection (agent -> runner).
type hello struct {
	Version int `json:"version"`
}

// welcome accepts the agent (runner -> agent) and lists what the runner
// holds.
type welcome struct {
	Version int `json:"version"`
	// Pid and Instance identify the runner process; Instance changes with
	// every runner process and is never empty. The runner takes a start
	// request over as it reads it, under the lock its welcomes are made
	// under, and only while the connection it came on is the attached
	// one: a welcome lists (in Running, Exits or Orphans) every start
	// request of an earlier connection that the runner acts on, and the
	// runner drops the rest.
	Pid      int    `json:"pid"`
	Instance string `json:"instance"`
	// Running are the children still running (Pid 0: still starting).
	Running []*Record `json:"running,omitempty"`
	// Exits are the exits not yet confirmed.
	Exits []*Record `json:"exits,omitempty"`
	// Orphans are children of an earlier runner process of this state
	// directory that was killed, not yet confirmed.
	Orphans []*Record `json:"orphans,omitempty"`
	// EnvDigest identifies the runner's own environment (envDigest).
	EnvDigest string `json:"env_digest,omitempty"`
	// Redact holds, by attempt id, the secrets of the children listed in
	// Running and Exits (their StartRequest.Redact), so that an agent
	// that re-adopts them redacts their outputs as the one that started
	// them would have.
	Redact map[int64][]redact.Secret `json:"redact,omitempty"`
}

// startMsg is a start request on the wire (agent -> runner). With
// EnvBase, Env holds only the entries that follow the runner's own
// environment, which the runner puts first: an agent's children share the
// agent's environment, the runner was started with it, and sending it
// with every start would cost more than some children do.
type startMsg struct {
	*StartRequest
	EnvBase bool `json:"env_base,omitempty"`
	// SentAt is the agent's wall clock when it measured Lease (see
	// leaseLeft).
	SentAt time.Time `json:"sent_at,omitzero"`
}

// leaseLeft returns what remains of a lease of remaining, measured by the
// agent at sentAt on the wall clock the runner shares with it, now that
// the runner reads it: a frame the runner reads late (it was stopped or
// starved) must not lengthen the lease by the delay. The wall clock may
// jump; it is only ever used to shorten a lease, which is safe.
func leaseLeft(remaining time.Duration, sentAt time.Time) time.Duration {
	if sentAt.IsZero() {
		return remaining
	}
	if delay := time.Now().Round(0).Sub(sentAt); delay > 0 {
		return remaining - delay
	}
	return remaining
}

// dedupEnv returns env with only the last entry of each name, where it
// stands, as os/exec passes an environment on: the runner's environment
// is the deduplicated one its agent gave it.
func dedupEnv(env []string) []string {
	seen := make(map[string]bool, len(env))
	out := make([]string, 0, len(env))
	for i := len(env) - 1; i >= 0; i-- {
		name, _, ok := strings.Cut(env[i], "=")
		if ok && name != "" {
			if seen[name] {
				continue
			}
			seen[name] = true
		}
		out = append(out, env[i])
	}
	slices.Reverse(out)
	return out
}

// envDigest identifies an environment: a hash of its entries in order.
func envDigest(env []string) string {
	h := sha256.New()
	for _, kv := range env {
		h.Write([]byte(kv))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// started answers a start (runner -> agent): the child runs, or Err says
// why it could not start.
type started struct {
	ID       int64     `json:"id"`
	Pid      int       `json:"pid,omitempty"`
	PidStart uint64    `json:"pid_start,omitempty"`
	BootID   string    `json:"boot_id,omitempty"`
	Start    time.Time `json:"start,omitzero"`
	Err      string    `json:"err,omitempty"`
	// LeaseExpired says the request's lease had ended when the runner read
	// it, so nothing was started (Err says so too).
	LeaseExpired bool `json:"lease_expired,omitempty"`
}

// signal asks the runner to stop a child's tree (agent -> runner): kill it
// at once, or SIGTERM and SIGKILL after Grace.
type signal struct {
	ID     int64         `json:"id"`
	Kill   bool          `json:"kill,omitempty"`
	Grace  time.Duration `json:"grace,omitempty"`
	Reason string        `json:"reason,omitempty"`
}

// renew extends the leases of children (agent -> runner): each runs until
// Remaining after the runner reads the frame, unless it already ran
// later (a renewal never shortens a lease). Unknown ids are ignored.
type renew struct {
	IDs       []int64       `json:"ids"`
	Remaining time.Duration `json:"remaining"`
	// Term is the control plane's lease length, for the exit record.
	Term time.Duration `json:"term,omitempty"`
	// SentAt is the agent's wall clock when it measured Remaining (see
	// leaseLeft).
	SentAt time.Time `json:"sent_at,omitzero"`
}

// confirm says the agent has journaled these exits (agent -> runner).
type confirm struct {
	IDs []int64 `json:"ids"`
}

// errFrameTooLarge is returned for a frame over maxFrame.
var errFrameTooLarge = errors.New("frame too large")

// encodeJSON returns f as a complete frame.
func encodeJSON(f *frame) ([]byte, error) {
	body, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("encode frame: %w", err)
	}
	if len(body)+1 > maxFrame {
		return nil, errFrameTooLarge
	}
	buf := make([]byte, 5, 5+len(body))
	binary.BigEndian.PutUint32(buf, uint32(len(body)+1))
	buf[4] = kindJSON
	return append(buf, body...), nil
}

// encodeOutput returns an output frame carrying a copy of data.
func encodeOutput(id int64, stream Stream, offset int64, data []byte) []byte {
	buf := make([]byte, 5+outputHeader+len(data))
	binary.BigEndian.PutUint32(buf, uint32(1+outputHeader+len(data)))
	buf[4] = kindOutput
	binary.BigEndian.PutUint64(buf[5:], uint64(id))
	buf[13] = byte(stream)
	binary.BigEndian.PutUint64(buf[14:], uint64(offset))
	copy(buf[5+outputHeader:], data)
	return buf
}

// readFrame reads one frame. The body is freshly allocated.
func readFrame(r *bufio.Reader) (kind byte, body []byte, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return 0, nil, errors.New("empty frame")
	}
	if n > maxFrame {
		return 0, nil, fmt.Errorf("%w: %d bytes", errFrameTooLarge, n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return buf[0], buf[1:], nil
}

// decodeJSON parses a kindJSON body.
func decodeJSON(body []byte) (*frame, error) {
	var f frame
	if err := json.Unmarshal(body, &f); err != nil {
		return nil, fmt.Errorf("decode frame: %w", err)
	}
	return &f, nil
}

// output is a decoded kindOutput body; data aliases the body.
type output struct {
	id     int64
	stream Stream
	offset int64
	data   []byte
}

func decodeOutput(body []byte) (output, error) {
	if len(body) < outputHeader {
		return output{}, errors.New("short output frame")
	}
	o := output{
		id:     int64(binary.BigEndian.Uint64(body)),
		stream: Stream(body[8]),
		offset: int64(binary.BigEndian.Uint64(body[9:])),
		data:   body[outputHeader:],
	}
	if o.stream != Stdout && o.stream != Stderr {
		return output{}, fmt.Errorf("output frame: unknown stream %d", o.stream)
	}
	if o.offset < 0 {
		return output{}, fmt.Errorf("output frame: negative offset %d", o.offset)
	}
	return o, nil
}
