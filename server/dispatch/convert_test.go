package dispatch

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
	"github.com/batonhq/baton/server/job"
)

func TestHelloFromProto(t *testing.T) {
	t.Parallel()
	good := &batonv1.Hello{Name: "etl-01", Slots: 4, Labels: map[string]string{"role": "ssis"}}
	if h, err := helloFromProto(good); err != nil || h.Name != "etl-01" || h.Slots != 4 {
		t.Fatalf("helloFromProto(good) = %+v, %v", h, err)
	}
	tests := []struct {
		name  string
		hello *batonv1.Hello
		want  string
	}{
		{"no name", &batonv1.Hello{Slots: 1}, "hello.name"},
		{"long name", &batonv1.Hello{Name: strings.Repeat("x", 200), Slots: 1}, "hello.name"},
		{"no slots", &batonv1.Hello{Name: "a"}, "hello.slots"},
		{"too many slots", &batonv1.Hello{Name: "a", Slots: maxSlots + 1}, "hello.slots"},
		{"empty label key", &batonv1.Hello{Name: "a", Slots: 1, Labels: map[string]string{"": "x"}}, "hello.labels"},
		{"bad unacked outcome", &batonv1.Hello{Name: "a", Slots: 1, Unacked: []*batonv1.TaskFinished{{AttemptId: 1}}}, "outcome"},
	}
	for _, tc := range tests {
		if _, err := helloFromProto(tc.hello); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: helloFromProto = %v, want an error naming %s", tc.name, err, tc.want)
		}
	}
}

func TestMessageFromProtoLimits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  *batonv1.ConnectRequest
		want string
	}{
		{"huge chunk", &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_LogChunk{LogChunk: &batonv1.LogChunk{
			Stream: batonv1.LogStream_LOG_STREAM_STDOUT, Data: make([]byte, maxChunk+1)}}}, "log_chunk.data"},
		{"negative offset", &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_LogChunk{LogChunk: &batonv1.LogChunk{
			Stream: batonv1.LogStream_LOG_STREAM_STDOUT, Offset: -1}}}, "log_chunk.offset"},
		{"unknown stream", &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_LogChunk{LogChunk: &batonv1.LogChunk{}}}, "log_chunk.stream"},
		{"second hello", &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_Hello{Hello: &batonv1.Hello{}}}, "hello"},
		{"huge outputs", &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: &batonv1.TaskFinished{
			Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED,
			Outputs: map[string]string{"k": strings.Repeat("v", maxOutputSize+1)}}}}, "task_finished.outputs"},
		{"huge tail", &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: &batonv1.TaskFinished{
			Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, StderrTail: make([]byte, maxTail+1)}}}, "tails"},
	}
	for _, tc := range tests {
		if _, err := messageFromProto(tc.msg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: messageFromProto = %v, want an error naming %s", tc.name, err, tc.want)
		}
	}
	if m, err := messageFromProto(&batonv1.ConnectRequest{}); m != nil || err != nil {
		t.Errorf("messageFromProto(empty) = %v, %v; want it ignored", m, err)
	}
}

// FuzzConnectRequest feeds arbitrary bytes, as an agent could send them,
// through decoding and conversion: nothing may panic.
func FuzzConnectRequest(f *testing.F) {
	seeds := []*batonv1.ConnectRequest{
		{Msg: &batonv1.ConnectRequest_Hello{Hello: &batonv1.Hello{Name: "a", Slots: 1, Unacked: []*batonv1.TaskFinished{{AttemptId: 3, Outcome: 1}}}}},
		{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: &batonv1.TaskFinished{AttemptId: 7, Outcome: 2, ExitCode: 3, Outputs: map[string]string{"RowCount": "42"}}}},
		{Msg: &batonv1.ConnectRequest_LogChunk{LogChunk: &batonv1.LogChunk{AttemptId: 7, Stream: 2, Data: []byte("boom")}}},
		{Msg: &batonv1.ConnectRequest_Heartbeat{Heartbeat: &batonv1.Heartbeat{Running: []int64{1, 2}}}},
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m batonv1.ConnectRequest
		if proto.Unmarshal(b, &m) != nil {
			return
		}
		if h := m.GetHello(); h != nil {
			_, _ = helloFromProto(h)
		}
		_, _ = messageFromProto(&m)
	})
}

func TestPick(t *testing.T) {
	t.Parallel()
	cands := []Candidate{
		{Name: "a", Labels: map[string]string{"role": "ssis"}, Free: 2, LastUsed: 5},
		{Name: "b", Labels: map[string]string{"role": "ssis"}, Free: 2, LastUsed: 3},
		{Name: "c", Labels: map[string]string{"role": "sql"}, Free: 4, LastUsed: 1},
		{Name: "d", Labels: map[string]string{"role": "ssis"}, Free: 0, LastUsed: 0},
	}
	tests := []struct {
		name string
		sel  job.Selector
		want string
	}{
		{"most free slots wins", job.Selector{}, "c"},
		{"ties go to the least recently used", job.Selector{Labels: map[string]string{"role": "ssis"}}, "b"},
		{"by name", job.Selector{Agent: "a"}, "a"},
		{"full agents are never picked", job.Selector{Agent: "d"}, ""},
		{"no match", job.Selector{Labels: map[string]string{"role": "web"}}, ""},
		{"name and labels must both match", job.Selector{Agent: "a", Labels: map[string]string{"role": "sql"}}, ""},
	}
	for _, tc := range tests {
		got := ""
		if i := Pick(cands, tc.sel); i >= 0 {
			got = cands[i].Name
		}
		if got != tc.want {
			t.Errorf("%s: Pick = %q, want %q", tc.name, got, tc.want)
		}
	}
}
