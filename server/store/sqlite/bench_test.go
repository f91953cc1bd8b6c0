package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlite"
)

// The benchmarks measure the hot paths of the dispatcher on a real
// database file with the default settings (WAL, synchronous=normal).
// ns/op is per call, or per item for the batched variants.

const batch = 100

func benchStore(b *testing.B, cfg sqlite.Config) (context.Context, *sqlite.Store) {
	b.Helper()
	ctx := context.Background()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(b.TempDir(), "bench.db")
	}
	s, err := sqlite.Open(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := s.Close(); err != nil {
			b.Errorf("Close() = %v", err)
		}
	})
	if err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	return ctx, s
}

// benchInstances creates a run with n ready instances.
func benchInstances(b *testing.B, ctx context.Context, s *sqlite.Store, n int) (*store.Run, []*store.Instance) {
	b.Helper()
	res, err := s.JobApply(ctx, &store.JobApplyParams{Name: "bench", Spec: []byte(`{"name":"bench"}`)})
	if err != nil {
		b.Fatal(err)
	}
	rc, err := s.RunCreate(ctx, &store.RunCreateParams{
		JobID: res.Job.ID, JobVersion: res.Job.Version, Overlap: store.OverlapAllow,
	})
	if err != nil {
		b.Fatal(err)
	}
	var all []*store.Instance
	for len(all) < n {
		ins := make([]store.InstanceInit, min(1000, n-len(all)))
		for i := range ins {
			ins[i] = store.InstanceInit{Task: "t", Item: len(all) + i, State: store.InstanceReady}
		}
		got, err := s.InstanceCreate(ctx, &store.InstanceCreateParams{RunID: rc.Run.ID, Instances: ins})
		if err != nil {
			b.Fatal(err)
		}
		all = append(all, got...)
	}
	return rc.Run, all
}

func claimAll(b *testing.B, ctx context.Context, s *sqlite.Store, ins []*store.Instance) []*store.Attempt {
	b.Helper()
	out := make([]*store.Attempt, len(ins))
	err := s.InTx(ctx, func(tx store.Store) error {
		for i, in := range ins {
			a, err := tx.AttemptClaim(ctx, &store.AttemptClaimParams{
				InstanceID: in.ID, Agent: "agent", Kind: store.AttemptFirst, LeaseTTL: time.Hour,
			})
			if err != nil {
				return err
			}
			out[i] = a
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return out
}

func BenchmarkAttemptClaim(b *testing.B) {
	b.Run("Single", func(b *testing.B) {
		ctx, s := benchStore(b, sqlite.Config{})
		_, ins := benchInstances(b, ctx, s, b.N)
		b.ResetTimer()
		for i := range b.N {
			if _, err := s.AttemptClaim(ctx, &store.AttemptClaimParams{
				InstanceID: ins[i].ID, Agent: "agent", Kind: store.AttemptFirst, LeaseTTL: time.Minute,
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Batched", func(b *testing.B) {
		ctx, s := benchStore(b, sqlite.Config{})
		_, ins := benchInstances(b, ctx, s, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			claimAll(b, ctx, s, ins[i:min(i+batch, b.N)])
		}
	})
}

func BenchmarkAttemptHeartbeat(b *testing.B) {
	for _, n := range []int{1, 50} {
		b.Run(map[int]string{1: "1Attempt", 50: "50Attempts"}[n], func(b *testing.B) {
			ctx, s := benchStore(b, sqlite.Config{})
			_, ins := benchInstances(b, ctx, s, n)
			ids := make([]int64, n)
			for i, a := range claimAll(b, ctx, s, ins) {
				ids[i] = a.ID
			}
			p := &store.AttemptHeartbeatParams{Agent: "agent", AttemptIDs: ids, LeaseTTL: time.Minute}
			b.ResetTimer()
			for range b.N {
				got, err := s.AttemptHeartbeat(ctx, p)
				if err != nil || len(got) != n {
					b.Fatalf("AttemptHeartbeat() = %d ids, %v; want %d", len(got), err, n)
				}
			}
		})
	}
}

func BenchmarkAttemptFinish(b *testing.B) {
	finish := func(ctx context.Context, s store.Store, a *store.Attempt) error {
		_, err := s.AttemptFinish(ctx, &store.AttemptFinishParams{
			ID: a.ID, Agent: "agent", State: store.AttemptSucceeded, ExitCode: new(int),
			Outputs: map[string]string{"RowCount": "42"}, StdoutTail: "done\n",
		})
		return err
	}
	b.Run("Single", func(b *testing.B) {
		ctx, s := benchStore(b, sqlite.Config{})
		_, ins := benchInstances(b, ctx, s, b.N)
		as := claimAll(b, ctx, s, ins)
		b.ResetTimer()
		for _, a := range as {
			if err := finish(ctx, s, a); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Batched", func(b *testing.B) {
		ctx, s := benchStore(b, sqlite.Config{})
		_, ins := benchInstances(b, ctx, s, b.N)
		as := claimAll(b, ctx, s, ins)
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			err := s.InTx(ctx, func(tx store.Store) error {
				for _, a := range as[i:min(i+batch, b.N)] {
					if err := finish(ctx, tx, a); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkEventAppend(b *testing.B) {
	event := func(run int64, i int) *store.Event {
		return &store.Event{RunID: run, Task: "t", Item: i, AttemptID: int64(i), Agent: "agent",
			InstanceState: store.InstanceSucceeded, ExitCode: new(int), Message: "exit 0"}
	}
	for _, sync := range []string{"normal", "full"} {
		b.Run("Single/synchronous="+sync, func(b *testing.B) {
			ctx, s := benchStore(b, sqlite.Config{Synchronous: sync})
			r, _ := benchInstances(b, ctx, s, 0)
			b.ResetTimer()
			for i := range b.N {
				if err := s.EventAppend(ctx, &store.EventAppendParams{Events: []*store.Event{event(r.ID, i)}}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("Batched", func(b *testing.B) {
		ctx, s := benchStore(b, sqlite.Config{})
		r, _ := benchInstances(b, ctx, s, 0)
		b.ResetTimer()
		for i := 0; i < b.N; i += batch {
			// One transaction of single-event appends, as the engine writes
			// an event beside each transition.
			err := s.InTx(ctx, func(tx store.Store) error {
				for j := i; j < min(i+batch, b.N); j++ {
					if err := tx.EventAppend(ctx, &store.EventAppendParams{Events: []*store.Event{event(r.ID, j)}}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTaskTransition measures the engine's unit of work, batched: a
// fenced instance transition plus its event, 100 per transaction. Its
// inverse is the throughput in task transitions per second.
func BenchmarkTaskTransition(b *testing.B) {
	ctx, s := benchStore(b, sqlite.Config{})
	r, ins := benchInstances(b, ctx, s, b.N)
	as := claimAll(b, ctx, s, ins)
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		err := s.InTx(ctx, func(tx store.Store) error {
			for j := i; j < min(i+batch, b.N); j++ {
				if err := tx.InstanceTransition(ctx, &store.InstanceTransitionParams{
					ID: ins[j].ID, From: []store.InstanceState{store.InstanceDispatched},
					To: store.InstanceRunning, AttemptID: as[j].ID,
				}); err != nil {
					return err
				}
				if err := tx.EventAppend(ctx, &store.EventAppendParams{Events: []*store.Event{{
					RunID: r.ID, Task: "t", Item: j, AttemptID: as[j].ID, InstanceState: store.InstanceRunning,
				}}}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTaskDurations measures the engine's duration estimate, one
// TaskDurations call per op, on a job with a long history.
func BenchmarkTaskDurations(b *testing.B) {
	// 1000Runs: 1,000 runs of a job of 10 plain tasks, each task
	// succeeded once per run (10,000 succeeded attempts), built through
	// the store.
	b.Run("1000Runs", func(b *testing.B) {
		const runs, tasks = 1000, 10
		ctx, s := benchStore(b, sqlite.Config{})
		res, err := s.JobApply(ctx, &store.JobApplyParams{Name: "bench", Spec: []byte(`{"name":"bench"}`)})
		if err != nil {
			b.Fatal(err)
		}
		ins := make([]store.InstanceInit, tasks)
		for i := range ins {
			ins[i] = store.InstanceInit{Task: fmt.Sprint("task-", i), Item: store.NoItem, State: store.InstanceReady}
		}
		start := time.Now().Add(-time.Hour)
		for r := range runs {
			err := s.InTx(ctx, func(tx store.Store) error {
				rc, err := tx.RunCreate(ctx, &store.RunCreateParams{
					JobID: res.Job.ID, JobVersion: res.Job.Version, Overlap: store.OverlapAllow, Instances: ins,
				})
				if err != nil {
					return err
				}
				list, err := tx.InstanceList(ctx, &store.InstanceListParams{RunID: rc.Run.ID})
				if err != nil {
					return err
				}
				for i, in := range list {
					a, err := tx.AttemptClaim(ctx, &store.AttemptClaimParams{
						InstanceID: in.ID, Agent: "agent", Kind: store.AttemptFirst, LeaseTTL: time.Hour,
					})
					if err != nil {
						return err
					}
					at := start.Add(time.Duration(r*tasks+i) * time.Millisecond)
					if _, err := tx.AttemptFinish(ctx, &store.AttemptFinishParams{
						ID: a.ID, Agent: "agent", State: store.AttemptSucceeded, ExitCode: new(int),
						StartedAt: at.Add(-time.Duration(i+1) * time.Second), FinishedAt: at,
					}); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		benchTaskDurations(b, ctx, s, tasks)
	})

	// ForEach: 25 runs of a job whose for-each task had 10,000 items per
	// run (250,000 succeeded attempts), more runs than TaskDurations
	// reads. The rows are inserted with SQL: through the store, building
	// them would take most of a minute.
	b.Run("ForEach10000Items", func(b *testing.B) {
		const runs, items = 25, 10000
		path := filepath.Join(b.TempDir(), "bench.db")
		ctx, s := benchStore(b, sqlite.Config{Path: path})
		res, err := s.JobApply(ctx, &store.JobApplyParams{Name: "bench", Spec: []byte(`{"name":"bench"}`)})
		if err != nil {
			b.Fatal(err)
		}
		db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if err := db.Close(); err != nil {
				b.Errorf("close the inserting connection: %v", err)
			}
		})
		for range runs {
			rc, err := s.RunCreate(ctx, &store.RunCreateParams{
				JobID: res.Job.ID, JobVersion: res.Job.Version, Overlap: store.OverlapAllow,
			})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, `
				WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < @items - 1)
				INSERT INTO task_instances (run_id, task, item, state, attempts)
				SELECT @run, 'per-client', i, 'succeeded', 1 FROM n;
				INSERT INTO attempts (instance_id, run_id, task, item, no, kind, agent, state,
				                      lease_expires_at, dispatched_at, started_at, finished_at)
				SELECT id, run_id, task, item, 1, 'first', 'agent', 'succeeded',
				       0, @t0 + 10 * item, @t0 + 10 * item, @t0 + 10 * item + 1000 + item % 100
				FROM task_instances WHERE run_id = @run;`,
				sql.Named("items", items), sql.Named("run", rc.Run.ID),
				sql.Named("t0", time.Now().Add(-time.Hour).UnixMilli())); err != nil {
				b.Fatal(err)
			}
		}
		benchTaskDurations(b, ctx, s, 1)
	})
}

func benchTaskDurations(b *testing.B, ctx context.Context, s *sqlite.Store, tasks int) {
	b.Helper()
	b.ResetTimer()
	for range b.N {
		got, err := s.TaskDurations(ctx, &store.TaskDurationsParams{JobName: "bench"})
		if err != nil || len(got) != tasks {
			b.Fatalf("TaskDurations() = %d tasks, %v; want %d", len(got), err, tasks)
		}
	}
}
