package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/batonhq/baton/server/job"
	"github.com/batonhq/baton/server/store"
)

func TestRetryAfterFailure(t *testing.T) {
	t.Parallel()
	task := &job.Task{Retries: 3, RetryDelay: job.Duration(10 * time.Second), RetryBackoff: 2}
	tests := []struct {
		failures  int
		wantRetry bool
		wantDelay time.Duration
	}{
		{1, true, 10 * time.Second},
		{2, true, 20 * time.Second},
		{3, true, 40 * time.Second},
		{4, false, 0},
	}
	for _, tc := range tests {
		retry, delay := RetryAfterFailure(task, tc.failures)
		if retry != tc.wantRetry || delay != tc.wantDelay {
			t.Errorf("RetryAfterFailure(retries 3, %d) = %v %v, want %v %v", tc.failures, retry, delay, tc.wantRetry, tc.wantDelay)
		}
	}
	if retry, _ := RetryAfterFailure(&job.Task{}, 1); retry {
		t.Errorf("RetryAfterFailure(no retries, 1) = true, want false")
	}
	huge := &job.Task{Retries: 100, RetryDelay: job.Duration(time.Minute), RetryBackoff: 10}
	if _, delay := RetryAfterFailure(huge, 50); delay != MaxRetryDelay {
		t.Errorf("RetryAfterFailure(backoff 10, 50) delay = %v, want the cap %v", delay, MaxRetryDelay)
	}
}

func TestRetryAfterLoss(t *testing.T) {
	t.Parallel()
	no := false
	if RetryAfterLoss(&job.Task{RetryOnLost: &no}, 1) {
		t.Errorf("RetryAfterLoss(retry_on_lost false) = true")
	}
	if !RetryAfterLoss(&job.Task{}, 1) {
		t.Errorf("RetryAfterLoss(default, 1) = false, want true")
	}
	if RetryAfterLoss(&job.Task{}, MaxLostRetries+1) {
		t.Errorf("RetryAfterLoss(default, %d) = true, want false", MaxLostRetries+1)
	}
}

func TestRemainingPath(t *testing.T) {
	t.Parallel()
	g := compileYAML(t, `
name: paths
tasks:
  - {name: long1, run: [x]}
  - {name: long2, needs: [long1], run: [x]}
  - {name: long3, needs: [long2], run: [x]}
  - {name: short, run: [x]}
  - {name: s1, stage: 1, run: [x]}
  - {name: s2, stage: 2, run: [x]}
`)
	known := map[string]time.Duration{"long1": time.Minute, "long2": time.Minute, "long3": time.Minute, "short": 5 * time.Minute}
	rem := g.RemainingPath(func(task string) (time.Duration, bool) {
		d, ok := known[task]
		return d, ok
	})
	want := map[string]time.Duration{
		"long1": 3 * time.Minute, "long2": 2 * time.Minute, "long3": time.Minute,
		"short": 5 * time.Minute, "s1": 2 * DefaultDuration, "s2": DefaultDuration,
	}
	for name, w := range want {
		i, _ := g.Lookup(name)
		if rem[i] != w {
			t.Errorf("RemainingPath[%s] = %v, want %v", name, rem[i], w)
		}
	}
}

func TestKeyOrder(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b Key
		want bool
	}{
		{Key{Priority: 1}, Key{Priority: 0, Remaining: time.Hour}, true},
		{Key{Remaining: time.Hour}, Key{Remaining: time.Minute}, true},
		{Key{Remaining: time.Minute, Seq: 1}, Key{Remaining: time.Minute, Seq: 2}, true},
		{Key{Remaining: time.Minute, Seq: 2}, Key{Remaining: time.Minute, Seq: 1}, false},
	}
	for _, tc := range tests {
		if got := tc.a.Less(tc.b); got != tc.want {
			t.Errorf("%+v.Less(%+v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

// dagSpec builds a layered DAG of n tasks: layers of `width` tasks, each
// task needing two tasks of the previous layer.
func dagSpec(n, width int) *job.Spec {
	s := &job.Spec{Name: "bench"}
	for i := range n {
		t := &job.Task{Name: fmt.Sprintf("t%d", i), Run: []string{"true"}}
		if layer := i / width; layer > 0 {
			base := (layer - 1) * width
			t.Needs = []job.Edge{{Task: fmt.Sprintf("t%d", base+i%width)}, {Task: fmt.Sprintf("t%d", base+(i+1)%width)}}
		}
		s.Tasks = append(s.Tasks, t)
	}
	return s
}

// BenchmarkReadiness measures the engine deciding a whole run: every task
// becomes ready and succeeds in turn. ns/task must stay flat as the DAG
// grows from 1,000 to 100,000 tasks.
func BenchmarkReadiness(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		spec := dagSpec(n, 100)
		g, err := Compile(spec)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("tasks=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r, err := NewRun(g, nil, nil)
				if err != nil {
					b.Fatal(err)
				}
				ready := []int{}
				for _, c := range r.Start() {
					if c.To == store.InstanceReady {
						ready = append(ready, c.Task)
					}
				}
				for len(ready) > 0 {
					t := ready[len(ready)-1]
					ready = ready[:len(ready)-1]
					for _, c := range r.Done(t, store.NoItem, store.InstanceSucceeded, nil, "") {
						if c.To == store.InstanceReady {
							ready = append(ready, c.Task)
						}
					}
				}
				if over, state, _ := r.Outcome(); !over || state != store.RunSucceeded {
					b.Fatalf("Outcome() = %v %s", over, state)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/task")
		})
	}
}
