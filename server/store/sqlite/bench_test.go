package sqlite_test

import (
	"context"
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
	cfg.Path = filepath.Join(b.TempDir(), "bench.db")
	s, err := sqlite.Open(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
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
