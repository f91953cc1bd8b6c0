package fakeserver

import (
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// Base is when the fixture runs start: 2026-11-21 02:00:00 UTC.
var Base = time.Date(2026, 11, 21, 2, 0, 0, 0, time.UTC)

// NightlyJob is the job file the fixtures are runs of.
const NightlyJob = `name: nightly-dw-load
description: Nightly data warehouse load
params: {load_date: "2026-11-21"}
tasks:
  - name: stage-customers
    stage: 1
    run: [/opt/etl/stage-customers.sh]
  - name: stage-orders
    stage: 1
    run: [/opt/etl/stage-orders.sh]
  - name: per-client
    needs: [stage-customers]
    for_each: {items: [acme, globex]}
    run: [/opt/etl/process-client, "${{ item }}"]
  - name: cleanup
    stage: 2
    needs: [per-client]
    run: [/opt/etl/cleanup.sh]
`

// Fixture timeline of the nightly run (offsets from Base).
//
//	cursor  time      event
//	 1      0s        run running
//	 2-3    0s        stage-customers, stage-orders dispatched
//	 4-5    1s        both running
//	 6      2.2s      stage-customers succeeded (took 1.2s)
//	 7-8    2.3s      per-client[0], per-client[1] ready (new instances)
//	 9-10   3s        both running on etl-01
//	11      3.4s      per-client[0] succeeded (0.4s)
//	12      4s        per-client[1] succeeded, or failed with exit 3 (1s)
//	13      3m05s     stage-orders succeeded (3m04s)
//	then, succeeded:  cleanup dispatched, running (3m06s), succeeded
//	                  (3m06.5s, 0.5s), run succeeded
//	or failed:        cleanup blocked, run failed (3m05s)

// NightlyRun returns a run of nightly-dw-load version 3 that ends in end:
// RUN_STATE_SUCCEEDED, or RUN_STATE_FAILED (item 1 of per-client fails
// with exit code 3 and cleanup is blocked). GetRun first shows three task
// instances; the two per-client items appear with event 7.
func NightlyRun(end batonv1.RunState) RunFixture {
	failed := end != batonv1.RunState_RUN_STATE_SUCCEEDED
	evs := []*batonv1.RunEvent{
		runEvent(0, batonv1.RunState_RUN_STATE_RUNNING, ""),
		taskEvent(0, "stage-customers", nil, batonv1.TaskState_TASK_STATE_DISPATCHED, "etl-01", nil, ""),
		taskEvent(0, "stage-orders", nil, batonv1.TaskState_TASK_STATE_DISPATCHED, "etl-02", nil, ""),
		taskEvent(time.Second, "stage-customers", nil, batonv1.TaskState_TASK_STATE_RUNNING, "etl-01", nil, ""),
		taskEvent(time.Second, "stage-orders", nil, batonv1.TaskState_TASK_STATE_RUNNING, "etl-02", nil, ""),
		taskEvent(2200*time.Millisecond, "stage-customers", nil, batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-01", proto.Int32(0), ""),
		taskEvent(2300*time.Millisecond, "per-client", proto.Int32(0), batonv1.TaskState_TASK_STATE_READY, "", nil, ""),
		taskEvent(2300*time.Millisecond, "per-client", proto.Int32(1), batonv1.TaskState_TASK_STATE_READY, "", nil, ""),
		taskEvent(3*time.Second, "per-client", proto.Int32(0), batonv1.TaskState_TASK_STATE_RUNNING, "etl-01", nil, ""),
		taskEvent(3*time.Second, "per-client", proto.Int32(1), batonv1.TaskState_TASK_STATE_RUNNING, "etl-01", nil, ""),
		taskEvent(3400*time.Millisecond, "per-client", proto.Int32(0), batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-01", proto.Int32(0), ""),
	}
	if failed {
		evs = append(evs, taskEvent(4*time.Second, "per-client", proto.Int32(1), batonv1.TaskState_TASK_STATE_FAILED, "etl-01", proto.Int32(3), "exit status 3"))
	} else {
		evs = append(evs, taskEvent(4*time.Second, "per-client", proto.Int32(1), batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-01", proto.Int32(0), ""))
	}
	evs = append(evs, taskEvent(3*time.Minute+5*time.Second, "stage-orders", nil, batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-02", proto.Int32(0), ""))
	if failed {
		evs = append(evs,
			taskEvent(3*time.Minute+5*time.Second, "cleanup", nil, batonv1.TaskState_TASK_STATE_BLOCKED, "", nil, "upstream per-client failed"),
			runEvent(3*time.Minute+5*time.Second, batonv1.RunState_RUN_STATE_FAILED, "task per-client[1] failed"),
		)
	} else {
		evs = append(evs,
			taskEvent(3*time.Minute+5100*time.Millisecond, "cleanup", nil, batonv1.TaskState_TASK_STATE_DISPATCHED, "etl-02", nil, ""),
			taskEvent(3*time.Minute+6*time.Second, "cleanup", nil, batonv1.TaskState_TASK_STATE_RUNNING, "etl-02", nil, ""),
			taskEvent(3*time.Minute+6500*time.Millisecond, "cleanup", nil, batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-02", proto.Int32(0), ""),
			runEvent(3*time.Minute+6500*time.Millisecond, batonv1.RunState_RUN_STATE_SUCCEEDED, ""),
		)
	}

	header := func(state batonv1.RunState) *batonv1.Run {
		return &batonv1.Run{
			Job:        "nightly-dw-load",
			JobVersion: 3,
			State:      state,
			Params:     map[string]string{"load_date": "2026-11-21"},
			CreateTime: at(0),
			StartTime:  at(0),
		}
	}
	pending := func(task string, item *int32, value string) *batonv1.TaskRun {
		return &batonv1.TaskRun{Task: task, ItemIndex: item, Item: value, State: batonv1.TaskState_TASK_STATE_PENDING}
	}

	initial := header(batonv1.RunState_RUN_STATE_RUNNING)
	initial.Tasks = []*batonv1.TaskRun{
		pending("stage-customers", nil, ""),
		pending("stage-orders", nil, ""),
		pending("cleanup", nil, ""),
	}

	expanded := header(batonv1.RunState_RUN_STATE_RUNNING)
	expanded.Tasks = []*batonv1.TaskRun{
		done("stage-customers", nil, "", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-01", 1, time.Second, 2200*time.Millisecond, 0),
		{Task: "stage-orders", State: batonv1.TaskState_TASK_STATE_RUNNING, Attempts: 1, AttemptId: 2, Agent: "etl-02", StartTime: at(time.Second)},
		pending("per-client", proto.Int32(0), "acme"),
		pending("per-client", proto.Int32(1), "globex"),
		pending("cleanup", nil, ""),
	}

	final := header(end)
	final.Tasks = []*batonv1.TaskRun{
		done("stage-customers", nil, "", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-01", 1, time.Second, 2200*time.Millisecond, 0),
		done("stage-orders", nil, "", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-02", 1, time.Second, 3*time.Minute+5*time.Second, 0),
		done("per-client", proto.Int32(0), "acme", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-01", 1, 3*time.Second, 3400*time.Millisecond, 0),
	}
	if failed {
		pc := done("per-client", proto.Int32(1), "globex", batonv1.TaskState_TASK_STATE_FAILED, "etl-01", 1, 3*time.Second, 4*time.Second, 3)
		pc.Error = "exit status 3"
		pc.StderrTail = "loading globex\nconnecting to dw01\nERROR: violation of PRIMARY KEY constraint 'PK_Client'\nrolled back 1204 rows\n"
		final.Tasks = append(final.Tasks, pc, &batonv1.TaskRun{
			Task: "cleanup", State: batonv1.TaskState_TASK_STATE_BLOCKED, Error: "upstream per-client failed",
		})
		final.Error = "task per-client[1] failed"
		final.EndTime = at(3*time.Minute + 5*time.Second)
	} else {
		final.Tasks = append(final.Tasks,
			done("per-client", proto.Int32(1), "globex", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-01", 1, 3*time.Second, 4*time.Second, 0),
			done("cleanup", nil, "", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-02", 1, 3*time.Minute+6*time.Second, 3*time.Minute+6500*time.Millisecond, 0),
		)
		final.EndTime = at(3*time.Minute + 6500*time.Millisecond)
	}
	return RunFixture{
		Run:    initial,
		Events: evs,
		Updates: []RunUpdate{
			{AtCursor: 7, Run: expanded},
			{AtCursor: int64(len(evs)), Run: final},
		},
	}
}

// FinalRun returns the run f ends as: its last update, or f.Run.
func (f RunFixture) FinalRun() *batonv1.Run {
	if n := len(f.Updates); n > 0 {
		return f.Updates[n-1].Run
	}
	return f.Run
}

func at(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(Base.Add(d)) }

func runEvent(d time.Duration, st batonv1.RunState, msg string) *batonv1.RunEvent {
	return &batonv1.RunEvent{Time: at(d), RunState: st, Message: msg}
}

func taskEvent(d time.Duration, task string, item *int32, st batonv1.TaskState, agent string, exit *int32, msg string) *batonv1.RunEvent {
	return &batonv1.RunEvent{Time: at(d), Task: task, ItemIndex: item, TaskState: st, Agent: agent, ExitCode: exit, Message: msg}
}

func done(task string, item *int32, value string, st batonv1.TaskState, agent string, attempts int32, start, end time.Duration, exit int32) *batonv1.TaskRun {
	return &batonv1.TaskRun{
		Task: task, ItemIndex: item, Item: value, State: st, Attempts: attempts, AttemptId: int64(attempts),
		Agent: agent, ExitCode: proto.Int32(exit), StartTime: at(start), EndTime: at(end),
	}
}

// RestartAt is when NightlyRestart restarts the run: an hour after Base.
const RestartAt = time.Hour

// Restart timeline of NightlyRestart (offsets from Base + RestartAt):
//
//	cursor   time   event
//	16       0s     run running, "restart 1: <reason>"
//	17-18    0s     per-client[1], cleanup pending again
//	19       1s     per-client[1] running on etl-02
//	20       2.5s   per-client[1] succeeded (took 1.5s), or failed with exit 3
//	then, succeeded:  cleanup dispatched (2.6s), running (3s), succeeded
//	                  (3.5s), run succeeded
//	or failed:        cleanup blocked, run failed (2.5s)
//
// The cursors are those of a restart of NightlyRun(RUN_STATE_FAILED).

// NightlyRestart returns a restart of NightlyRun(RUN_STATE_FAILED) in the
// default mode: per-client[1] and cleanup run again, the succeeded
// instances are kept. It ends in end: RUN_STATE_SUCCEEDED, or
// RUN_STATE_FAILED (per-client[1] fails again and cleanup is blocked).
func NightlyRestart(end batonv1.RunState) Restart {
	failed := end != batonv1.RunState_RUN_STATE_SUCCEEDED
	r := func(d time.Duration) time.Duration { return RestartAt + d }
	evs := []*batonv1.RunEvent{
		taskEvent(r(0), "per-client", proto.Int32(1), batonv1.TaskState_TASK_STATE_PENDING, "", nil, "restart"),
		taskEvent(r(0), "cleanup", nil, batonv1.TaskState_TASK_STATE_PENDING, "", nil, "restart"),
		taskEvent(r(time.Second), "per-client", proto.Int32(1), batonv1.TaskState_TASK_STATE_RUNNING, "etl-02", nil, ""),
	}
	if failed {
		evs = append(evs,
			taskEvent(r(2500*time.Millisecond), "per-client", proto.Int32(1), batonv1.TaskState_TASK_STATE_FAILED, "etl-02", proto.Int32(3), "exit status 3"),
			taskEvent(r(2500*time.Millisecond), "cleanup", nil, batonv1.TaskState_TASK_STATE_BLOCKED, "", nil, "upstream per-client failed"),
			runEvent(r(2500*time.Millisecond), batonv1.RunState_RUN_STATE_FAILED, "task per-client[1] failed"),
		)
	} else {
		evs = append(evs,
			taskEvent(r(2500*time.Millisecond), "per-client", proto.Int32(1), batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-02", proto.Int32(0), ""),
			taskEvent(r(2600*time.Millisecond), "cleanup", nil, batonv1.TaskState_TASK_STATE_DISPATCHED, "etl-02", nil, ""),
			taskEvent(r(3*time.Second), "cleanup", nil, batonv1.TaskState_TASK_STATE_RUNNING, "etl-02", nil, ""),
			taskEvent(r(3500*time.Millisecond), "cleanup", nil, batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-02", proto.Int32(0), ""),
			runEvent(r(3500*time.Millisecond), batonv1.RunState_RUN_STATE_SUCCEEDED, ""),
		)
	}

	header := func(state batonv1.RunState) *batonv1.Run {
		return &batonv1.Run{
			Job:        "nightly-dw-load",
			JobVersion: 3,
			State:      state,
			Params:     map[string]string{"load_date": "2026-11-21"},
			CreateTime: at(0),
			StartTime:  at(0),
		}
	}
	kept := []*batonv1.TaskRun{
		done("stage-customers", nil, "", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-01", 1, time.Second, 2200*time.Millisecond, 0),
		done("stage-orders", nil, "", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-02", 1, time.Second, 3*time.Minute+5*time.Second, 0),
		done("per-client", proto.Int32(0), "acme", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-01", 1, 3*time.Second, 3400*time.Millisecond, 0),
	}
	restarted := header(batonv1.RunState_RUN_STATE_RUNNING)
	restarted.Tasks = append(clone(kept),
		&batonv1.TaskRun{Task: "per-client", ItemIndex: proto.Int32(1), Item: "globex", State: batonv1.TaskState_TASK_STATE_PENDING, Attempts: 1},
		&batonv1.TaskRun{Task: "cleanup", State: batonv1.TaskState_TASK_STATE_PENDING},
	)

	final := header(end)
	final.Tasks = clone(kept)
	pc := done("per-client", proto.Int32(1), "globex", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-02", 2, r(time.Second), r(2500*time.Millisecond), 0)
	if failed {
		pc.State, pc.ExitCode, pc.Error = batonv1.TaskState_TASK_STATE_FAILED, proto.Int32(3), "exit status 3"
		final.Tasks = append(final.Tasks, pc, &batonv1.TaskRun{
			Task: "cleanup", State: batonv1.TaskState_TASK_STATE_BLOCKED, Error: "upstream per-client failed",
		})
		final.Error = "task per-client[1] failed"
		final.EndTime = at(r(2500 * time.Millisecond))
	} else {
		final.Tasks = append(final.Tasks, pc,
			done("cleanup", nil, "", batonv1.TaskState_TASK_STATE_SUCCEEDED, "etl-02", 1, r(3*time.Second), r(3500*time.Millisecond), 0))
		final.EndTime = at(r(3500 * time.Millisecond))
	}
	return Restart{
		At:      Base.Add(RestartAt),
		Run:     restarted,
		Events:  evs,
		Updates: []RunUpdate{{AtCursor: int64(len(evs)), Run: final}},
	}
}

// NightlyAttempts returns the attempt history of NightlyRun(RUN_STATE_FAILED)
// restarted once with NightlyRestart(RUN_STATE_SUCCEEDED).
func NightlyAttempts() []*batonv1.Attempt {
	att := func(id int64, task string, item *int32, no int32, kind batonv1.AttemptKind, agent string,
		st batonv1.AttemptState, exit int32, start, end time.Duration, restart int32) *batonv1.Attempt {
		return &batonv1.Attempt{
			Id: id, Task: task, ItemIndex: item, Number: no, Kind: kind, Agent: agent, State: st,
			ExitCode: proto.Int32(exit), DispatchTime: at(start - 500*time.Millisecond), StartTime: at(start), EndTime: at(end),
			Restart: restart,
		}
	}
	first, restart := batonv1.AttemptKind_ATTEMPT_KIND_FIRST, batonv1.AttemptKind_ATTEMPT_KIND_RESTART
	ok := batonv1.AttemptState_ATTEMPT_STATE_SUCCEEDED
	failed := att(4, "per-client", proto.Int32(1), 1, first, "etl-01", batonv1.AttemptState_ATTEMPT_STATE_FAILED, 3, 3*time.Second, 4*time.Second, 0)
	failed.Error = "exit status 3"
	return []*batonv1.Attempt{
		att(1, "stage-customers", nil, 1, first, "etl-01", ok, 0, time.Second, 2200*time.Millisecond, 0),
		att(2, "stage-orders", nil, 1, first, "etl-02", ok, 0, time.Second, 3*time.Minute+5*time.Second, 0),
		att(3, "per-client", proto.Int32(0), 1, first, "etl-01", ok, 0, 3*time.Second, 3400*time.Millisecond, 0),
		failed,
		att(5, "per-client", proto.Int32(1), 2, restart, "etl-02", ok, 0, RestartAt+time.Second, RestartAt+2500*time.Millisecond, 1),
		att(6, "cleanup", nil, 1, first, "etl-02", ok, 0, RestartAt+3*time.Second, RestartAt+3500*time.Millisecond, 1),
	}
}

func clone(tasks []*batonv1.TaskRun) []*batonv1.TaskRun {
	out := make([]*batonv1.TaskRun, len(tasks))
	for i, t := range tasks {
		out[i] = proto.Clone(t).(*batonv1.TaskRun)
	}
	return out
}

// Finished returns f as a run that is already over: GetRun returns its
// final state from the start, and its events are all in the log.
func (f RunFixture) Finished() RunFixture {
	return RunFixture{Run: f.FinalRun(), Events: f.Events}
}

// Finished returns r as a restart that is already over: right after it,
// GetRun returns the run's final state.
func (r Restart) Finished() Restart {
	if n := len(r.Updates); n > 0 {
		r.Run = r.Updates[n-1].Run
	}
	r.Updates = nil
	return r
}
