package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// fakeAgent speaks the agent protocol over the real AgentService: it says
// Hello and then does what the test tells it, with no child processes.
type fakeAgent struct {
	stream batonv1.AgentService_ConnectClient
	cancel context.CancelFunc
	msgs   chan *batonv1.ConnectResponse // closed when the stream ends
	// sent counts the output bytes sent per attempt and stream: the next
	// chunk's offset.
	sent map[[2]int64]int64
}

// connectAgent connects an agent and waits for its Welcome.
func connectAgent(t *testing.T, conn *grpc.ClientConn, hello *batonv1.Hello) *fakeAgent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := batonv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		cancel()
		t.Fatalf("Connect: %v", err)
	}
	a := &fakeAgent{stream: stream, cancel: cancel, msgs: make(chan *batonv1.ConnectResponse, 64), sent: map[[2]int64]int64{}}
	go func() {
		defer close(a.msgs)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			a.msgs <- m
		}
	}()
	t.Cleanup(a.disconnect)
	a.send(t, &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_Hello{Hello: hello}})
	if m := a.next(t); m.GetWelcome() == nil {
		t.Fatalf("first message = %v, want a Welcome", m)
	}
	return a
}

func (a *fakeAgent) send(t *testing.T, m *batonv1.ConnectRequest) {
	t.Helper()
	if err := a.stream.Send(m); err != nil {
		t.Fatalf("agent send %v: %v", m, err)
	}
}

// next returns the next message from batond.
func (a *fakeAgent) next(t *testing.T) *batonv1.ConnectResponse {
	t.Helper()
	select {
	case m, ok := <-a.msgs:
		if !ok {
			t.Fatal("agent stream ended")
		}
		return m
	case <-time.After(waitTimeout):
		t.Fatalf("no message from batond within %s", waitTimeout)
		return nil
	}
}

// nextStart returns the next StartTask, skipping acks and lease renewals.
func (a *fakeAgent) nextStart(t *testing.T) *batonv1.StartTask {
	t.Helper()
	for {
		if st := a.next(t).GetStartTask(); st != nil {
			return st
		}
	}
}

// disconnect ends the stream and waits for its reader.
func (a *fakeAgent) disconnect() {
	a.cancel()
	for range a.msgs {
	}
}

// run plays one attempt: started, a stdout and a stderr chunk (unless
// empty), then finished with outcome and exit code.
func (a *fakeAgent) run(t *testing.T, st *batonv1.StartTask, stdout, stderr string, outcome batonv1.AttemptOutcome, exit int32, outputs map[string]string) {
	t.Helper()
	id := st.GetAttemptId()
	a.started(t, id)
	if stdout != "" {
		a.log(t, id, batonv1.LogStream_LOG_STREAM_STDOUT, stdout)
	}
	if stderr != "" {
		a.log(t, id, batonv1.LogStream_LOG_STREAM_STDERR, stderr)
	}
	var errMsg string
	if exit != 0 {
		errMsg = fmt.Sprintf("exit status %d", exit)
	}
	a.send(t, &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: &batonv1.TaskFinished{
		AttemptId: id, Outcome: outcome, ExitCode: exit, Error: errMsg, Outputs: outputs,
		StdoutTail: []byte(stdout), StderrTail: []byte(stderr), StartTime: timestamppb.Now(), EndTime: timestamppb.Now(),
	}}})
}

func (a *fakeAgent) started(t *testing.T, id int64) {
	t.Helper()
	a.send(t, &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskStarted{TaskStarted: &batonv1.TaskStarted{
		AttemptId: id, StartTime: timestamppb.Now(), Pid: 4242}}})
}

// log sends the next chunk of a stream's output.
func (a *fakeAgent) log(t *testing.T, id int64, stream batonv1.LogStream, data string) {
	t.Helper()
	key := [2]int64{id, int64(stream)}
	a.send(t, &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_LogChunk{LogChunk: &batonv1.LogChunk{
		AttemptId: id, Stream: stream, Offset: a.sent[key], Data: []byte(data)}}})
	a.sent[key] += int64(len(data))
}

// TestTaskLogsUTF8: agents cut output into chunks at any byte, also
// inside a character. GetTaskLogs returns each character whole: only bytes
// that are not UTF-8 become U+FFFD, as does a character the output ends
// inside of.
func TestTaskLogsUTF8(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, "name: one\ntasks:\n  - name: a\n    run: [/bin/a]\n")
	run := startRun(t, b, "one")
	agent := connectAgent(t, b.srv.conn, &batonv1.Hello{Name: "etl-01", Slots: 1})
	st := agent.nextStart(t)
	id := st.GetAttemptId()
	stdout, stderr := batonv1.LogStream_LOG_STREAM_STDOUT, batonv1.LogStream_LOG_STREAM_STDERR
	agent.started(t, id)
	agent.log(t, id, stdout, "Gr\xc3")                  // "Grüße" cut inside ü
	agent.log(t, id, stderr, "\xe2\x82")                // "€" cut after two of its three bytes
	agent.log(t, id, stdout, "\xbc\xc3\x9fe\n\xf0\x9f") // the rest of ü, ß, then half of 🙂
	agent.log(t, id, stderr, "\xac \xff\n")             // the rest of €, then a byte that is never UTF-8
	agent.log(t, id, stdout, "\x99\x82 ok\n\xe2\x82")   // the rest of 🙂, then an unfinished €
	agent.send(t, &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: &batonv1.TaskFinished{
		AttemptId: id, Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED,
	}}})
	waitEnded(t, b.runs, run.GetId())

	logs, err := b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: run.GetId(), Task: "a"})
	if err != nil {
		t.Fatalf("GetTaskLogs: %v", err)
	}
	var out, errOut strings.Builder
	for _, c := range logs.GetChunks() {
		if c.GetStream() == stdout {
			out.WriteString(c.GetData())
		} else {
			errOut.WriteString(c.GetData())
		}
	}
	if got, want := out.String(), "Grüße\n🙂 ok\n\uFFFD"; got != want {
		t.Errorf("GetTaskLogs stdout = %q, want %q", got, want)
	}
	if got, want := errOut.String(), "€ \uFFFD\n"; got != want {
		t.Errorf("GetTaskLogs stderr = %q, want %q", got, want)
	}
	if n := len(logs.GetChunks()); n != 5 {
		t.Errorf("GetTaskLogs = %d chunks, want the 5 stored", n)
	}
}

// flowJob fans out over two items between two plain tasks.
const flowJob = `name: flow
tasks:
  - name: extract
    run: [/bin/extract]
  - name: per-client
    needs: [extract]
    for_each: {items: [acme, globex]}
    run: [/bin/process, "${{ item }}"]
  - name: load
    needs: [per-client]
    runs_on: {labels: {role: etl}}
    run: [/bin/load]
`

// watchAll collects a run's events until its WatchRun stream ends.
func watchAll(t *testing.T, runs batonv1.RunServiceClient, id int64) <-chan []*batonv1.RunEvent {
	t.Helper()
	stream, err := runs.WatchRun(testContext(t), &batonv1.WatchRunRequest{RunId: id})
	if err != nil {
		t.Fatalf("WatchRun(%d): %v", id, err)
	}
	out := make(chan []*batonv1.RunEvent, 1)
	go func() {
		var evs []*batonv1.RunEvent
		for {
			resp, err := stream.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					evs = append(evs, &batonv1.RunEvent{Message: "stream error: " + err.Error()})
				}
				out <- evs
				return
			}
			evs = append(evs, resp.GetEvent())
		}
	}()
	return out
}

// TestAgentRun: a run carried out by an agent (speaking the real agent
// protocol) is reported by the API: live WatchRun events to the end, task
// outcomes with agent, exit code, outputs and items in GetRun, the attempt
// history, the stored logs of each attempt, the agent in ListAgents; a
// failed run restarts and its restart shows in the history.
func TestAgentRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, flowJob)
	run := startRun(t, b, "flow")
	id := run.GetId()
	watched := watchAll(t, b.runs, id) // live: the run has not started any task yet

	agent := connectAgent(t, b.srv.conn, &batonv1.Hello{
		Name: "etl-01", Slots: 2, Labels: map[string]string{"role": "etl"}, Version: "test", Hostname: "host-1", Os: "linux",
	})
	agents, err := b.admin.ListAgents(ctx, &batonv1.ListAgentsRequest{})
	if err != nil {
		t.Fatalf("ListAgents: %v", err)
	}
	if len(agents.GetAgents()) != 1 {
		t.Fatalf("ListAgents = %v, want etl-01", agents.GetAgents())
	}
	if a := agents.GetAgents()[0]; a.GetName() != "etl-01" || a.GetState() != batonv1.AgentState_AGENT_STATE_CONNECTED ||
		a.GetSlots() != 2 || a.GetLabels()["role"] != "etl" || a.GetHostname() != "host-1" || a.GetConnectTime() == nil {
		t.Errorf("ListAgents = %v, want etl-01 connected with 2 slots, role=etl, host-1", a)
	}

	// extract, then both items, then load, which fails.
	st := agent.nextStart(t)
	if st.GetTask() != "extract" || st.GetRunId() != id || st.GetJob() != "flow" {
		t.Fatalf("first StartTask = %v, want extract of run %d", st, id)
	}
	agent.run(t, st, "extracted\n", "warning: slow\n", batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED, 0, map[string]string{"rows": "42"})
	items := map[string]bool{}
	for range 2 {
		st := agent.nextStart(t)
		if st.GetTask() != "per-client" {
			t.Fatalf("StartTask = %s, want per-client", st.GetTask())
		}
		items[st.GetItem()] = true
		agent.run(t, st, "client "+st.GetItem()+"\n", "", batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED, 0, nil)
	}
	if !items["acme"] || !items["globex"] {
		t.Errorf("per-client items = %v, want acme and globex", items)
	}
	st = agent.nextStart(t)
	if st.GetTask() != "load" {
		t.Fatalf("StartTask = %s, want load", st.GetTask())
	}
	firstLoad := st.GetAttemptId()
	agent.run(t, st, "loading\n", "deadlock\n", batonv1.AttemptOutcome_ATTEMPT_OUTCOME_FAILED, 3, nil)

	evs := <-watched
	if len(evs) == 0 || evs[len(evs)-1].GetRunState() != batonv1.RunState_RUN_STATE_FAILED {
		t.Fatalf("live WatchRun = %v, want it to end with the run failed", evs)
	}
	sawExit := false
	for _, ev := range evs {
		if ev.GetTask() == "load" && ev.GetTaskState() == batonv1.TaskState_TASK_STATE_FAILED && ev.GetExitCode() == 3 && ev.GetAgent() == "etl-01" {
			sawExit = true
		}
	}
	if !sawExit {
		t.Errorf("live WatchRun has no event of load failing with exit 3 on etl-01: %v", evs)
	}

	got, err := b.runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: id})
	if err != nil {
		t.Fatalf("GetRun: %v", err)
	}
	if got.GetRun().GetState() != batonv1.RunState_RUN_STATE_FAILED || got.GetRun().GetEndTime() == nil {
		t.Errorf("run = %v end %v, want failed with an end time", got.GetRun().GetState(), got.GetRun().GetEndTime())
	}
	// Each instance by task[item index], with its latest attempt.
	type taskView struct {
		Item, Agent, Error string
		Exit               int32 // -1: none
		State              batonv1.TaskState
		Outputs            map[string]string
	}
	tasks := map[string]taskView{}
	for _, tr := range got.GetRun().GetTasks() {
		key := tr.GetTask()
		if tr.ItemIndex != nil {
			key = fmt.Sprintf("%s[%d]", key, tr.GetItemIndex())
		}
		exit := int32(-1)
		if tr.ExitCode != nil {
			exit = tr.GetExitCode()
		}
		tasks[key] = taskView{Item: tr.GetItem(), Agent: tr.GetAgent(), Error: tr.GetError(), Exit: exit, State: tr.GetState(), Outputs: tr.GetOutputs()}
	}
	succeeded, failed := batonv1.TaskState_TASK_STATE_SUCCEEDED, batonv1.TaskState_TASK_STATE_FAILED
	want := map[string]taskView{
		"extract":       {Agent: "etl-01", Exit: 0, State: succeeded, Outputs: map[string]string{"rows": "42"}},
		"per-client":    {Exit: -1, State: succeeded},
		"per-client[0]": {Item: "acme", Agent: "etl-01", Exit: 0, State: succeeded},
		"per-client[1]": {Item: "globex", Agent: "etl-01", Exit: 0, State: succeeded},
		"load":          {Agent: "etl-01", Error: "exit status 3", Exit: 3, State: failed},
	}
	if diff := cmp.Diff(want, tasks, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("GetRun tasks (-want +got):\n%s", diff)
	}

	// The attempt history, and one task's.
	atts, err := b.runs.ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: id})
	if err != nil {
		t.Fatalf("ListAttempts: %v", err)
	}
	var history []string
	for _, a := range atts.GetAttempts() {
		name := a.GetTask()
		if a.ItemIndex != nil {
			name = fmt.Sprintf("%s[%d]", name, a.GetItemIndex())
		}
		history = append(history, fmt.Sprintf("%s #%d %v %v exit=%d on %s", name, a.GetNumber(), a.GetKind(), a.GetState(), a.GetExitCode(), a.GetAgent()))
		if a.GetDispatchTime() == nil || a.GetStartTime() == nil || a.GetEndTime() == nil {
			t.Errorf("attempt %d times = %v %v %v, want dispatch, start and end", a.GetId(), a.GetDispatchTime(), a.GetStartTime(), a.GetEndTime())
		}
	}
	first, ok := batonv1.AttemptKind_ATTEMPT_KIND_FIRST, batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED
	wantHistory := []string{
		fmt.Sprintf("extract #1 %v %v exit=0 on etl-01", first, ok),
		fmt.Sprintf("per-client[0] #1 %v %v exit=0 on etl-01", first, ok),
		fmt.Sprintf("per-client[1] #1 %v %v exit=0 on etl-01", first, ok),
		fmt.Sprintf("load #1 %v %v exit=3 on etl-01", first, batonv1.AttemptState_ATTEMPT_STATE_FAILED),
	}
	if diff := cmp.Diff(wantHistory, history); diff != "" {
		t.Errorf("ListAttempts (-want +got):\n%s", diff)
	}
	loadAtts, err := b.runs.ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: id, Task: "load"})
	if err != nil {
		t.Fatalf("ListAttempts(load): %v", err)
	}
	if len(loadAtts.GetAttempts()) != 1 || loadAtts.GetAttempts()[0].GetId() != firstLoad {
		t.Errorf("ListAttempts(load) = %v, want attempt %d only", loadAtts.GetAttempts(), firstLoad)
	}

	// Logs: both streams of the latest attempt, and an item's by index.
	logs, err := b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: id, Task: "extract"})
	if err != nil {
		t.Fatalf("GetTaskLogs(extract): %v", err)
	}
	if diff := cmp.Diff([]string{"LOG_STREAM_STDOUT extracted\n", "LOG_STREAM_STDERR warning: slow\n"}, logText(logs)); diff != "" {
		t.Errorf("GetTaskLogs(extract) chunks (-want +got):\n%s", diff)
	}
	if logs.GetAttemptId() == 0 || logs.GetTruncated() || logs.GetStdoutTail() != "extracted\n" || logs.GetStderrTail() != "warning: slow\n" {
		t.Errorf("GetTaskLogs(extract) = attempt %d truncated %t tails %q %q, want an attempt, not truncated, both tails",
			logs.GetAttemptId(), logs.GetTruncated(), logs.GetStdoutTail(), logs.GetStderrTail())
	}
	one := int32(1)
	logs, err = b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: id, Task: "per-client", ItemIndex: &one})
	if err != nil {
		t.Fatalf("GetTaskLogs(per-client[1]): %v", err)
	}
	if diff := cmp.Diff([]string{"LOG_STREAM_STDOUT client globex\n"}, logText(logs)); diff != "" {
		t.Errorf("GetTaskLogs(per-client[1]) chunks (-want +got):\n%s", diff)
	}
	// Another task's attempt is not this task's.
	_, err = b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: id, Task: "extract", AttemptId: firstLoad})
	wantCode(t, "GetTaskLogs(extract, load's attempt)", err, codes.NotFound)

	// Restart the failed run: only load runs again, as a restart attempt.
	_, err = b.runs.RestartRun(ctx, &batonv1.RestartRunRequest{RunId: id, Mode: batonv1.RestartMode_RESTART_MODE_FROM_TASK, FromTask: "nope"})
	wantInvalid(t, "RestartRun of the failed run from an unknown task", err, "from_task")
	if _, err := b.runs.RestartRun(ctx, &batonv1.RestartRunRequest{RunId: id, Reason: "fixed the deadlock"}); err != nil {
		t.Fatalf("RestartRun: %v", err)
	}
	// From the start: the earlier generation's terminal event does not
	// end the stream of the restarted run.
	watched = watchAll(t, b.runs, id)
	st = agent.nextStart(t)
	if st.GetTask() != "load" || st.GetAttemptId() == firstLoad {
		t.Fatalf("StartTask after restart = %s attempt %d, want a new attempt of load", st.GetTask(), st.GetAttemptId())
	}
	agent.run(t, st, "loaded\n", "", batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED, 0, nil)
	evs = <-watched
	if last := evs[len(evs)-1]; last.GetRunState() != batonv1.RunState_RUN_STATE_SUCCEEDED {
		t.Fatalf("WatchRun after restart ends with %v, want the run succeeded", last)
	}
	loadAtts, err = b.runs.ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: id, Task: "load"})
	if err != nil {
		t.Fatalf("ListAttempts(load): %v", err)
	}
	if n := len(loadAtts.GetAttempts()); n != 2 {
		t.Fatalf("ListAttempts(load) after restart = %d attempts, want 2", n)
	}
	if a := loadAtts.GetAttempts()[1]; a.GetKind() != batonv1.AttemptKind_ATTEMPT_KIND_RESTART || a.GetRestart() != 1 || a.GetNumber() != 2 {
		t.Errorf("restart attempt = kind %v restart %d number %d, want RESTART, 1, 2", a.GetKind(), a.GetRestart(), a.GetNumber())
	}
	logs, err = b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: id, Task: "load"})
	if err != nil {
		t.Fatalf("GetTaskLogs(load): %v", err)
	}
	if diff := cmp.Diff([]string{"LOG_STREAM_STDOUT loaded\n"}, logText(logs)); diff != "" {
		t.Errorf("GetTaskLogs(load) latest attempt (-want +got):\n%s", diff)
	}
	logs, err = b.runs.GetTaskLogs(ctx, &batonv1.GetTaskLogsRequest{RunId: id, Task: "load", AttemptId: firstLoad})
	if err != nil {
		t.Fatalf("GetTaskLogs(load, first attempt): %v", err)
	}
	if diff := cmp.Diff([]string{"LOG_STREAM_STDOUT loading\n", "LOG_STREAM_STDERR deadlock\n"}, logText(logs)); diff != "" {
		t.Errorf("GetTaskLogs(load, first attempt) (-want +got):\n%s", diff)
	}

	// Once its stream ends the agent is listed as disconnected.
	agent.disconnect()
	waitFor(t, "etl-01 to be listed as disconnected", func() bool {
		agents, err := b.admin.ListAgents(ctx, &batonv1.ListAgentsRequest{})
		return err == nil && len(agents.GetAgents()) == 1 &&
			agents.GetAgents()[0].GetState() == batonv1.AgentState_AGENT_STATE_DISCONNECTED
	})
}

// logText renders stored chunks as "STREAM data".
func logText(logs *batonv1.GetTaskLogsResponse) []string {
	var out []string
	for _, c := range logs.GetChunks() {
		out = append(out, c.GetStream().String()+" "+c.GetData())
	}
	return out
}

// waitFor polls cond until it holds, failing the test after waitTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitTimeout, what)
		}
		<-tick.C
	}
}

// TestListAgents: connected agents come first, then the rest, each by
// name; running counts an agent's attempts in flight.
func TestListAgents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, "name: pinned\ntasks:\n  - name: a\n    runs_on: {agent: zeta}\n    run: [/bin/a]\n")
	zeta := connectAgent(t, b.srv.conn, &batonv1.Hello{Name: "zeta", Slots: 4})
	alpha := connectAgent(t, b.srv.conn, &batonv1.Hello{Name: "alpha", Slots: 1})
	connectAgent(t, b.srv.conn, &batonv1.Hello{Name: "mid", Slots: 1})
	startRun(t, b, "pinned")
	zeta.started(t, zeta.nextStart(t).GetAttemptId())
	alpha.disconnect()

	type view struct {
		Name    string
		State   batonv1.AgentState
		Running int32
	}
	connected, disconnected := batonv1.AgentState_AGENT_STATE_CONNECTED, batonv1.AgentState_AGENT_STATE_DISCONNECTED
	want := []view{{"mid", connected, 0}, {"zeta", connected, 1}, {"alpha", disconnected, 0}}
	var got []view
	waitFor(t, "alpha to be listed as disconnected", func() bool {
		res, err := b.admin.ListAgents(ctx, &batonv1.ListAgentsRequest{})
		if err != nil {
			t.Fatalf("ListAgents: %v", err)
		}
		got = got[:0]
		done := false
		for _, a := range res.GetAgents() {
			got = append(got, view{a.GetName(), a.GetState(), a.GetRunning()})
			done = done || (a.GetName() == "alpha" && a.GetState() == disconnected)
		}
		return done
	})
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ListAgents (-want +got):\n%s", diff)
	}
}

// TestAgentNotAllowedIsFinal: an attempt the agent's allowlist refused
// (ATTEMPT_OUTCOME_NOT_ALLOWED) is final: recorded rejected with the
// agent's message, not retried although the task has retries, not placed
// on another agent; the instance fails, its failure edge fires and the
// run fails. The StartTask carried the task's secret reference as a
// reference only.
func TestAgentNotAllowedIsFinal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := testContext(t)
	applyJob(t, b, `name: refused
tasks:
  - name: shell
    run: [/bin/sh, -c, "rm -rf /"]
    retries: 3
    env:
      PASSWORD: secret:dbpass
      PLAIN: "secret-looking but ${{ 'literal' }}"
  - name: alert
    needs: [{task: shell, status: failure}]
    run: [/opt/etl/bin/alert]
`)
	id := startRun(t, b, "refused").GetId()
	agent := connectAgent(t, b.srv.conn, &batonv1.Hello{Name: "a1", Slots: 2, Version: "test", Os: "linux"})
	st := agent.nextStart(t)
	if st.GetTask() != "shell" {
		t.Fatalf("first StartTask = %s, want shell", st.GetTask())
	}
	if diff := cmp.Diff(map[string]string{"PASSWORD": "dbpass"}, st.GetSecretEnv()); diff != "" {
		t.Errorf("StartTask.secret_env (-want +got):\n%s", diff)
	}
	if _, ok := st.GetEnv()["PASSWORD"]; ok || st.GetEnv()["PLAIN"] != "secret-looking but literal" {
		t.Errorf("StartTask.env = %v, want PLAIN only (the secret is a reference, not a value)", st.GetEnv())
	}
	msg := "program /bin/sh is not allowed on agent a1: it matches none of --allow /opt/etl/bin/*"
	agent.send(t, &batonv1.ConnectRequest{Msg: &batonv1.ConnectRequest_TaskFinished{TaskFinished: &batonv1.TaskFinished{
		AttemptId: st.GetAttemptId(), Outcome: batonv1.AttemptOutcome_ATTEMPT_OUTCOME_NOT_ALLOWED, ExitCode: -1, Error: msg,
		StartTime: timestamppb.Now(), EndTime: timestamppb.Now(),
	}}})
	// The failure edge fires: the next start is alert, not shell again.
	next := agent.nextStart(t)
	if next.GetTask() != "alert" {
		t.Fatalf("StartTask after the refusal = %s (attempt %d), want alert: a refused attempt is not retried", next.GetTask(), next.GetAttempt())
	}
	agent.run(t, next, "", "", batonv1.AttemptOutcome_ATTEMPT_OUTCOME_SUCCEEDED, 0, nil)
	waitEnded(t, b.runs, id)

	got, err := b.runs.GetRun(ctx, &batonv1.GetRunRequest{RunId: id})
	if err != nil {
		t.Fatalf("GetRun: %v", err)
	}
	if got.GetRun().GetState() != batonv1.RunState_RUN_STATE_FAILED {
		t.Errorf("run state = %v, want failed", got.GetRun().GetState())
	}
	for _, tr := range got.GetRun().GetTasks() {
		if tr.GetTask() != "shell" {
			continue
		}
		if tr.GetState() != batonv1.TaskState_TASK_STATE_FAILED || tr.GetAttemptState() != batonv1.AttemptState_ATTEMPT_STATE_REJECTED ||
			tr.GetAttempts() != 1 || tr.GetError() != msg || tr.ExitCode != nil {
			t.Errorf("shell = %v; want failed after 1 attempt, rejected, with the agent's message and no exit code", tr)
		}
	}
	atts, err := b.runs.ListAttempts(ctx, &batonv1.ListAttemptsRequest{RunId: id, Task: "shell"})
	if err != nil {
		t.Fatalf("ListAttempts: %v", err)
	}
	if n := len(atts.GetAttempts()); n != 1 || atts.GetAttempts()[0].GetState() != batonv1.AttemptState_ATTEMPT_STATE_REJECTED ||
		atts.GetAttempts()[0].GetError() != msg {
		t.Errorf("attempts of shell = %v; want one, rejected, with the agent's message", atts.GetAttempts())
	}
}
