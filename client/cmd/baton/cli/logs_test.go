package cli_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/batonhq/baton/client/cmd/baton/cli"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

func chunk(s batonv1.LogStream, data string) *batonv1.TaskLogChunk {
	return &batonv1.TaskLogChunk{Stream: s, Data: data}
}

const (
	stdout = batonv1.LogStream_LOG_STREAM_STDOUT
	stderr = batonv1.LogStream_LOG_STREAM_STDERR
)

func TestLogs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.SetLogs(1, "stage-orders", nil, &batonv1.GetTaskLogsResponse{
		AttemptId: 12,
		Chunks: []*batonv1.TaskLogChunk{
			chunk(stdout, "staging orders\n"),
			chunk(stderr, "warning: 3 rows without customer\n"),
			chunk(stdout, "staged 1204 rows\n"),
		},
		StdoutTail: "staged 1204 rows\n",
		StderrTail: "warning: 3 rows without customer\n",
	})
	b.srv.SetLogs(1, "per-client", proto.Int32(1), &batonv1.GetTaskLogsResponse{
		AttemptId:  14,
		Chunks:     []*batonv1.TaskLogChunk{chunk(stdout, "loading globex\n"), chunk(stdout, "row 1\nrow 2")},
		Truncated:  true,
		StdoutTail: "row 99998\nrow 99999\n",
		StderrTail: "ERROR: violation of PRIMARY KEY constraint\n",
	})
	// Only the tails are stored.
	b.srv.SetLogs(1, "cleanup", nil, &batonv1.GetTaskLogsResponse{AttemptId: 15, StdoutTail: "done", StderrTail: "no temp files\n"})

	tests := []struct {
		name       string
		args       []string
		wantStdout string
		wantStderr string
	}{
		{
			name:       "all, in order",
			args:       []string{"logs", "1", "stage-orders"},
			wantStdout: "staging orders\nwarning: 3 rows without customer\nstaged 1204 rows\n",
		},
		{
			name:       "stdout",
			args:       []string{"logs", "1", "stage-orders", "--stream", "stdout"},
			wantStdout: "staging orders\nstaged 1204 rows\n",
		},
		{
			name:       "stderr of an attempt",
			args:       []string{"logs", "1", "stage-orders", "--stream", "stderr", "--attempt", "12"},
			wantStdout: "warning: 3 rows without customer\n",
		},
		{
			name: "capped, of an item",
			args: []string{"logs", "1", "per-client", "--item", "1"},
			wantStdout: lines("loading globex", "row 1", "row 2", "[... log capped; its tail follows ...]",
				"row 99998", "row 99999", "ERROR: violation of PRIMARY KEY constraint"),
			wantStderr: "baton: the stored log of attempt 14 was capped; showing its head and tail\n",
		},
		{
			name:       "capped, stderr only",
			args:       []string{"logs", "1", "per-client", "--item", "1", "--stream", "stderr"},
			wantStdout: lines("[... log capped; its tail follows ...]", "ERROR: violation of PRIMARY KEY constraint"),
			wantStderr: "baton: the stored log of attempt 14 was capped; showing its head and tail\n",
		},
		{
			name:       "tails only",
			args:       []string{"logs", "1", "cleanup"},
			wantStdout: "done\nno temp files\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b.run(t, tc.args...).want(t, cli.ExitOK, tc.wantStdout, tc.wantStderr)
		})
	}

	t.Run("errors", func(t *testing.T) {
		t.Parallel()
		b.run(t, "logs", "1", "per-client").want(t, cli.ExitError, "",
			"baton: get logs of run 1 task \"per-client\": no logs for run 1 task \"per-client\"\n")
		b.run(t, "logs", "1", "stage-orders", "--attempt", "99").want(t, cli.ExitError, "",
			"baton: get logs of run 1 task \"stage-orders\": no logs for run 1 task \"stage-orders\"\n")
		b.run(t, "logs", "1", "stage-orders", "--stream", "both").want(t, cli.ExitError, "",
			"baton: invalid --stream \"both\": want stdout, stderr or all\nRun 'baton logs --help' for usage.\n")
		b.run(t, "logs", "1", "per-client", "--item", "-1").want(t, cli.ExitError, "",
			"baton: invalid --item -1: must not be negative\nRun 'baton logs --help' for usage.\n")
		b.run(t, "logs", "1").want(t, cli.ExitError, "",
			"baton: baton logs needs TASK\nRun 'baton logs --help' for usage.\n")
	})

	t.Run("json", func(t *testing.T) {
		t.Parallel()
		var resp batonv1.GetTaskLogsResponse
		decode(t, b.run(t, "logs", "1", "cleanup", "-o", "json"), &resp)
		want := &batonv1.GetTaskLogsResponse{AttemptId: 15, StdoutTail: "done", StderrTail: "no temp files\n"}
		if diff := cmp.Diff(want, &resp, protocmp.Transform()); diff != "" {
			t.Errorf("logs -o json (-want +got):\n%s", diff)
		}
	})
}

func TestLogsRequest(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.SetLogs(1, "per-client", proto.Int32(0), &batonv1.GetTaskLogsResponse{AttemptId: 3})

	b.run(t, "logs", "1", "per-client", "--item", "0", "--attempt", "3").want(t, cli.ExitOK, "", "")
	want := []*batonv1.GetTaskLogsRequest{{RunId: 1, Task: "per-client", ItemIndex: proto.Int32(0), AttemptId: 3}}
	if diff := cmp.Diff(want, b.srv.LogRequests(), protocmp.Transform()); diff != "" {
		t.Errorf("GetTaskLogs requests (-want +got):\n%s", diff)
	}
}
