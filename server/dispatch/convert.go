package dispatch

import (
	"fmt"
	"unicode/utf8"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/store"
)

// Limits on what an agent may send; larger values are refused with
// INVALID_ARGUMENT rather than stored.
const (
	maxNameLen    = 128
	maxLabels     = 64
	maxLabelLen   = 256
	maxSlots      = 100000
	maxOutputs    = 1024
	maxOutputSize = 64 << 10
	maxTail       = 64 << 10
	maxChunk      = 1 << 20
	maxErrorLen   = 4096
	maxListed     = 100000
)

func helloFromProto(h *batonv1.Hello) (*Hello, error) {
	if h.GetName() == "" || len(h.GetName()) > maxNameLen || !utf8.ValidString(h.GetName()) {
		return nil, fmt.Errorf("hello.name: must be 1-%d characters", maxNameLen)
	}
	if h.GetSlots() < 1 || h.GetSlots() > maxSlots {
		return nil, fmt.Errorf("hello.slots: must be between 1 and %d, got %d", maxSlots, h.GetSlots())
	}
	if len(h.GetLabels()) > maxLabels {
		return nil, fmt.Errorf("hello.labels: at most %d labels", maxLabels)
	}
	for k, v := range h.GetLabels() {
		if k == "" || len(k) > maxLabelLen || len(v) > maxLabelLen {
			return nil, fmt.Errorf("hello.labels: bad label %q", k)
		}
	}
	if len(h.GetRunning()) > maxListed || len(h.GetUnacked()) > maxListed {
		return nil, fmt.Errorf("hello: too many running or unacked attempts")
	}
	out := &Hello{
		Name:     h.GetName(),
		Labels:   h.GetLabels(),
		Slots:    int(h.GetSlots()),
		Version:  h.GetVersion(),
		Hostname: h.GetHostname(),
		OS:       h.GetOs(),
		BootID:   h.GetBootId(),
	}
	for _, r := range h.GetRunning() {
		out.Running = append(out.Running, r.GetAttemptId())
	}
	for _, f := range h.GetUnacked() {
		fin, err := finishedFromProto(f)
		if err != nil {
			return nil, fmt.Errorf("hello.unacked: %w", err)
		}
		out.Unacked = append(out.Unacked, fin)
	}
	return out, nil
}

// messageFromProto converts an inbound message; nil means ignore it.
func messageFromProto(m *batonv1.ConnectRequest) (any, error) {
	switch v := m.GetMsg().(type) {
	case *batonv1.ConnectRequest_Heartbeat:
		if len(v.Heartbeat.GetRunning()) > maxListed {
			return nil, fmt.Errorf("heartbeat.running: too many attempts")
		}
		return &Heartbeat{Running: v.Heartbeat.GetRunning(), Draining: v.Heartbeat.GetDraining(), Seq: v.Heartbeat.GetSeq()}, nil
	case *batonv1.ConnectRequest_TaskStarted:
		s := v.TaskStarted
		return &Started{AttemptID: s.GetAttemptId(), At: s.GetStartTime().AsTime(), PID: int(s.GetPid())}, nil
	case *batonv1.ConnectRequest_LogChunk:
		c := v.LogChunk
		if len(c.GetData()) > maxChunk {
			return nil, fmt.Errorf("log_chunk.data: larger than %d bytes", maxChunk)
		}
		if c.GetOffset() < 0 {
			return nil, fmt.Errorf("log_chunk.offset: negative")
		}
		stream := store.Stdout
		switch c.GetStream() {
		case batonv1.LogStream_LOG_STREAM_STDOUT:
		case batonv1.LogStream_LOG_STREAM_STDERR:
			stream = store.Stderr
		default:
			return nil, fmt.Errorf("log_chunk.stream: unknown stream %v", c.GetStream())
		}
		return &Log{AttemptID: c.GetAttemptId(), Stream: stream, Offset: c.GetOffset(), Data: c.GetData()}, nil
	case *batonv1.ConnectRequest_TaskFinished:
		return finishedFromProto(v.TaskFinished)
	case *batonv1.ConnectRequest_Hello:
		return nil, fmt.Errorf("hello: sent twice")
	}
	return nil, nil // an empty or newer message kind: ignore
}

func finishedFromProto(f *batonv1.TaskFinished) (*Finished, error) {
	var o Outcome
	switch f.GetOutcome() {
	case batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED:
		o = OutcomeSucceeded
	case batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED:
		o = OutcomeFailed
	case batonv1.AttemptOutcome_ATTEMPT_OUTCOME_START_FAILED:
		o = OutcomeStartFailed
	case batonv1.AttemptOutcome_ATTEMPT_OUTCOME_TIMED_OUT:
		o = OutcomeTimedOut
	case batonv1.AttemptOutcome_ATTEMPT_OUTCOME_CANCELLED:
		o = OutcomeCancelled
	case batonv1.AttemptOutcome_ATTEMPT_OUTCOME_REJECTED:
		o = OutcomeRejected
	case batonv1.AttemptOutcome_ATTEMPT_OUTCOME_LEASE_EXPIRED:
		o = OutcomeLeaseExpired
	case batonv1.AttemptOutcome_ATTEMPT_OUTCOME_NOT_ALLOWED:
		o = OutcomeNotAllowed
	default:
		return nil, fmt.Errorf("task_finished.outcome: unknown outcome %v for attempt %d", f.GetOutcome(), f.GetAttemptId())
	}
	if len(f.GetOutputs()) > maxOutputs {
		return nil, fmt.Errorf("task_finished.outputs: more than %d outputs", maxOutputs)
	}
	size := 0
	for k, v := range f.GetOutputs() {
		size += len(k) + len(v)
	}
	if size > maxOutputSize {
		return nil, fmt.Errorf("task_finished.outputs: larger than %d bytes", maxOutputSize)
	}
	if len(f.GetStdoutTail()) > maxTail || len(f.GetStderrTail()) > maxTail {
		return nil, fmt.Errorf("task_finished: tails larger than %d bytes", maxTail)
	}
	msg := f.GetError()
	if len(msg) > maxErrorLen {
		msg = msg[:maxErrorLen]
	}
	out := &Finished{
		AttemptID:  f.GetAttemptId(),
		Outcome:    o,
		ExitCode:   int(f.GetExitCode()),
		Error:      msg,
		Outputs:    f.GetOutputs(),
		StdoutTail: f.GetStdoutTail(),
		StderrTail: f.GetStderrTail(),
	}
	if f.GetStartTime() != nil {
		out.StartedAt = f.GetStartTime().AsTime()
	}
	if f.GetEndTime() != nil {
		out.FinishedAt = f.GetEndTime().AsTime()
	}
	return out, nil
}
