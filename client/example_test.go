package client_test

import (
	"context"
	"fmt"
	"log"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/client/internal/fakeserver"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// exampleServer starts a stand-in control plane holding one finished run of
// the nightly load; it returns the server's address, the run id and a
// function that stops it.
func exampleServer() (addr string, runID int64, stop func()) {
	srv, err := fakeserver.New()
	if err != nil {
		log.Fatal(err)
	}
	runID = srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED))
	return srv.Addr(), runID, srv.Close
}

// Wait for a run to end, printing each task instance that ends on the way.
func ExampleClient_WaitRun() {
	addr, runID, stop := exampleServer()
	defer stop()

	conn, err := client.Dial(client.DialConfig{Addr: addr})
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	c := client.New(conn)

	run, err := c.WaitRun(context.Background(), runID, &client.WaitOptions{
		OnEvent: func(ev *batonv1.RunEvent) error {
			switch ev.GetTaskState() {
			case batonv1.TaskState_TASK_STATE_SUCCEEDED, batonv1.TaskState_TASK_STATE_FAILED:
				fmt.Println(ev.GetTask(), ev.GetTaskState())
			}
			return nil
		},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("run", run.GetState(), "-", run.GetError())
	// Output:
	// stage-customers TASK_STATE_SUCCEEDED
	// per-client TASK_STATE_SUCCEEDED
	// per-client TASK_STATE_FAILED
	// stage-orders TASK_STATE_SUCCEEDED
	// run RUN_STATE_FAILED - task per-client[1] failed
}

// Read a run's event log from a cursor on. The loop ends when the run is
// terminal; breaking out of it closes the stream.
func ExampleClient_WatchRun() {
	addr, runID, stop := exampleServer()
	defer stop()

	conn, err := client.Dial(client.DialConfig{Addr: addr})
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	c := client.New(conn)

	for ev, err := range c.WatchRun(context.Background(), runID, 12) {
		if err != nil {
			panic(err)
		}
		fmt.Println(ev.GetCursor(), ev.GetTask(), ev.GetTaskState(), ev.GetRunState())
	}
	// Output:
	// 13 stage-orders TASK_STATE_SUCCEEDED RUN_STATE_UNSPECIFIED
	// 14 cleanup TASK_STATE_BLOCKED RUN_STATE_UNSPECIFIED
	// 15  TASK_STATE_UNSPECIFIED RUN_STATE_FAILED
}

// Restart a failed run and follow the restart to its end, without the
// events of the run's first try; then list its attempt history.
func ExampleClient_RestartRun() {
	srv, err := fakeserver.New()
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	runID := srv.AddRun(fakeserver.NightlyRun(batonv1.RunState_RUN_STATE_FAILED).Finished())
	srv.QueueRestart(runID, fakeserver.NightlyRestart(batonv1.RunState_RUN_STATE_SUCCEEDED))
	srv.SetAttempts(runID, fakeserver.NightlyAttempts())

	conn, err := client.Dial(client.DialConfig{Addr: srv.Addr()})
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	c := client.New(conn)
	ctx := context.Background()

	run, err := c.RestartRun(ctx, &client.RestartRunParams{RunID: runID, Reason: "PK_Client duplicates removed"})
	if err != nil {
		panic(err)
	}
	run, err = c.WaitRun(ctx, runID, &client.WaitOptions{
		FromRestart: run.GetRestartCount(),
		OnEvent: func(ev *batonv1.RunEvent) error {
			if ev.GetTask() == "" {
				fmt.Printf("run %s %q\n", ev.GetRunState(), ev.GetMessage())
			}
			return nil
		},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("restart", run.GetRestartCount(), "ended", run.GetState())

	attempts, err := c.ListAttempts(ctx, runID, "per-client")
	if err != nil {
		panic(err)
	}
	for _, a := range attempts {
		fmt.Println(a.GetId(), a.GetTask(), a.GetItemIndex(), a.GetKind(), a.GetState(), "restart", a.GetRestart())
	}
	// Output:
	// run RUN_STATE_RUNNING "restart 1: PK_Client duplicates removed"
	// run RUN_STATE_SUCCEEDED ""
	// restart 1 ended RUN_STATE_SUCCEEDED
	// 3 per-client 0 ATTEMPT_KIND_FIRST ATTEMPT_STATE_SUCCEEDED restart 0
	// 4 per-client 1 ATTEMPT_KIND_FIRST ATTEMPT_STATE_FAILED restart 0
	// 5 per-client 1 ATTEMPT_KIND_RESTART ATTEMPT_STATE_SUCCEEDED restart 1
}
