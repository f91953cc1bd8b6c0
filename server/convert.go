package server

import (
	"encoding/json"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/store"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func runStateToProto(s store.RunState) batonv1.RunState {
	switch s {
	case store.RunQueued:
		return batonv1.RunState_RUN_STATE_QUEUED
	case store.RunRunning:
		return batonv1.RunState_RUN_STATE_RUNNING
	case store.RunCancelling:
		return batonv1.RunState_RUN_STATE_CANCELLING
	case store.RunSucceeded:
		return batonv1.RunState_RUN_STATE_SUCCEEDED
	case store.RunFailed:
		return batonv1.RunState_RUN_STATE_FAILED
	case store.RunCancelled:
		return batonv1.RunState_RUN_STATE_CANCELLED
	}
	return batonv1.RunState_RUN_STATE_UNSPECIFIED
}

func taskStateToProto(s store.InstanceState) batonv1.TaskState {
	switch s {
	case store.InstancePending:
		return batonv1.TaskState_TASK_STATE_PENDING
	case store.InstanceReady:
		return batonv1.TaskState_TASK_STATE_READY
	case store.InstanceDispatched:
		return batonv1.TaskState_TASK_STATE_DISPATCHED
	case store.InstanceRunning:
		return batonv1.TaskState_TASK_STATE_RUNNING
	case store.InstanceSucceeded:
		return batonv1.TaskState_TASK_STATE_SUCCEEDED
	case store.InstanceFailed:
		return batonv1.TaskState_TASK_STATE_FAILED
	case store.InstanceSkipped:
		return batonv1.TaskState_TASK_STATE_SKIPPED
	case store.InstanceBlocked:
		return batonv1.TaskState_TASK_STATE_BLOCKED
	case store.InstanceCancelled:
		return batonv1.TaskState_TASK_STATE_CANCELLED
	case store.InstanceLost:
		return batonv1.TaskState_TASK_STATE_LOST
	}
	return batonv1.TaskState_TASK_STATE_UNSPECIFIED
}

func streamToProto(s store.LogStream) batonv1.LogStream {
	if s == store.Stderr {
		return batonv1.LogStream_LOG_STREAM_STDERR
	}
	return batonv1.LogStream_LOG_STREAM_STDOUT
}

func runToProto(r *store.Run) *batonv1.Run {
	return &batonv1.Run{
		Id:           r.ID,
		Job:          r.JobName,
		JobVersion:   int32(r.JobVersion),
		State:        runStateToProto(r.State),
		Params:       r.Params,
		RestartCount: int32(r.RestartCount),
		RequestId:    r.RequestID,
		Error:        r.Error,
		CreateTime:   ts(r.CreatedAt),
		StartTime:    ts(r.StartedAt),
		EndTime:      ts(r.FinishedAt),
		RestartTime:  ts(r.RestartedAt),
	}
}

func itemIndex(item int) *int32 {
	if item == store.NoItem {
		return nil
	}
	v := int32(item)
	return &v
}

func taskRunToProto(in *store.Instance, a *store.Attempt) *batonv1.TaskRun {
	out := &batonv1.TaskRun{
		Task:      in.Task,
		ItemIndex: itemIndex(in.Item),
		Item:      itemDisplay(in.ItemValue),
		State:     taskStateToProto(in.State),
		Attempts:  int32(in.Attempts),
		AttemptId: in.AttemptID,
		Error:     in.Error,
		Outputs:   in.Outputs,
		StartTime: ts(in.StartedAt),
		EndTime:   ts(in.FinishedAt),
	}
	if a != nil {
		out.Agent = a.Agent
		out.AttemptState = attemptStateToProto(a.State)
		if a.ExitCode != nil {
			v := int32(*a.ExitCode)
			out.ExitCode = &v
		}
		if out.Error == "" {
			out.Error = a.Error
		}
		out.StdoutTail = a.StdoutTail
		out.StderrTail = a.StderrTail
		if out.StartTime == nil {
			out.StartTime = ts(a.StartedAt)
		}
	}
	return out
}

// itemDisplay shows a stored item (JSON) the way BATON_ITEM does.
func itemDisplay(jsonValue string) string {
	if len(jsonValue) >= 2 && jsonValue[0] == '"' {
		if s, err := unquoteJSON(jsonValue); err == nil {
			return s
		}
	}
	return jsonValue
}

func eventToProto(e *store.Event) *batonv1.RunEvent {
	out := &batonv1.RunEvent{
		Cursor:    e.Cursor,
		RunId:     e.RunID,
		Time:      ts(e.At),
		Task:      e.Task,
		ItemIndex: itemIndex(e.Item),
		AttemptId: e.AttemptID,
		RunState:  runStateToProto(e.RunState),
		TaskState: taskStateToProto(e.InstanceState),
		Agent:     e.Agent,
		Message:   strings.ToValidUTF8(e.Message, "\uFFFD"),
	}
	if e.Task == "" {
		out.ItemIndex = nil
	}
	if e.ExitCode != nil {
		v := int32(*e.ExitCode)
		out.ExitCode = &v
	}
	return out
}

func unquoteJSON(s string) (string, error) {
	var out string
	err := json.Unmarshal([]byte(s), &out)
	return out, err
}

func attemptStateToProto(s store.AttemptState) batonv1.AttemptState {
	switch s {
	case store.AttemptDispatched:
		return batonv1.AttemptState_ATTEMPT_STATE_DISPATCHED
	case store.AttemptRunning:
		return batonv1.AttemptState_ATTEMPT_STATE_RUNNING
	case store.AttemptSucceeded:
		return batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED
	case store.AttemptFailed:
		return batonv1.AttemptState_ATTEMPT_STATE_FAILED
	case store.AttemptTimedOut:
		return batonv1.AttemptState_ATTEMPT_STATE_TIMED_OUT
	case store.AttemptCancelled:
		return batonv1.AttemptState_ATTEMPT_STATE_CANCELLED
	case store.AttemptLost:
		return batonv1.AttemptState_ATTEMPT_STATE_LOST
	case store.AttemptRejected:
		return batonv1.AttemptState_ATTEMPT_STATE_REJECTED
	}
	return batonv1.AttemptState_ATTEMPT_STATE_UNSPECIFIED
}

func attemptKindToProto(k store.AttemptKind) batonv1.AttemptKind {
	switch k {
	case store.AttemptFirst:
		return batonv1.AttemptKind_ATTEMPT_KIND_FIRST
	case store.AttemptRetry:
		return batonv1.AttemptKind_ATTEMPT_KIND_RETRY
	case store.AttemptRestart:
		return batonv1.AttemptKind_ATTEMPT_KIND_RESTART
	case store.AttemptReplacement:
		return batonv1.AttemptKind_ATTEMPT_KIND_REPLACEMENT
	}
	return batonv1.AttemptKind_ATTEMPT_KIND_UNSPECIFIED
}

func attemptToProto(a *store.Attempt) *batonv1.Attempt {
	out := &batonv1.Attempt{
		Id:           a.ID,
		Task:         a.Task,
		ItemIndex:    itemIndex(a.Item),
		Number:       int32(a.No),
		Kind:         attemptKindToProto(a.Kind),
		Agent:        a.Agent,
		State:        attemptStateToProto(a.State),
		Error:        a.Error,
		DispatchTime: ts(a.DispatchedAt),
		StartTime:    ts(a.StartedAt),
		EndTime:      ts(a.FinishedAt),
		LateState:    attemptStateToProto(a.LateState),
		Restart:      int32(a.Restart),
	}
	if a.ExitCode != nil {
		v := int32(*a.ExitCode)
		out.ExitCode = &v
	}
	return out
}
