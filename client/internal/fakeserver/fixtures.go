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
