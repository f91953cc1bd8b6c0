package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batonhq/baton/server/store"
)

func testEvent(t *testing.T, h Harness) {
	b := setup(t, h)
	j := b.job(t, "j")
	r1, r2 := b.run(t, j, store.OverlapAllow), b.run(t, j, store.OverlapAllow)
	at := ms(time.Now().Add(-time.Minute))
	evs := []*store.Event{
		{RunID: r1.ID, Item: store.NoItem, RunState: store.RunRunning, Message: "started"},
		{RunID: r2.ID, Item: store.NoItem, RunState: store.RunRunning},
		{RunID: r1.ID, Task: "each", Item: 3, AttemptID: 77, InstanceState: store.InstanceFailed,
			Agent: "etl-01", ExitCode: intp(3), Message: "exit 3", At: at},
		{RunID: r1.ID, Task: "t", Item: store.NoItem, Message: "informational"},
	}
	if err := b.s.EventAppend(b.ctx, &store.EventAppendParams{Events: evs}); err != nil {
		t.Fatalf("EventAppend() = %v", err)
	}
	// The store assigns cursors, ascending in append order, and At when zero.
	for i, e := range evs {
		if e.Cursor <= 0 || (i > 0 && e.Cursor <= evs[i-1].Cursor) {
			t.Fatalf("event %d cursor %d, want positive and above the previous", i, e.Cursor)
		}
		checkTime(t, "At", e.At)
	}
	if !evs[2].At.Equal(at) {
		t.Fatalf("event At = %v, want the given %v", evs[2].At, at)
	}

	list := func(p store.EventListParams) []*store.Event {
		t.Helper()
		got, err := b.s.EventList(b.ctx, &p)
		if err != nil {
			t.Fatalf("EventList(%+v) = %v", p, err)
		}
		return got
	}
	for _, tc := range []struct {
		name string
		p    store.EventListParams
		want []*store.Event
	}{
		{"Run1", store.EventListParams{RunID: r1.ID}, []*store.Event{evs[0], evs[2], evs[3]}},
		{"Run2", store.EventListParams{RunID: r2.ID}, []*store.Event{evs[1]}},
		{"After", store.EventListParams{RunID: r1.ID, After: evs[0].Cursor}, []*store.Event{evs[2], evs[3]}},
		{"AfterLast", store.EventListParams{RunID: r1.ID, After: evs[3].Cursor}, nil},
		{"Limit", store.EventListParams{RunID: r1.ID, Limit: 2}, []*store.Event{evs[0], evs[2]}},
		{"UnknownRun", store.EventListParams{RunID: r2.ID + 1000}, nil},
	} {
		if diff := cmp.Diff(tc.want, list(tc.p)); diff != "" {
			t.Errorf("%s: EventList(%+v) mismatch (-want +got):\n%s", tc.name, tc.p, diff)
		}
	}

	err := b.s.EventAppend(b.ctx, &store.EventAppendParams{Events: []*store.Event{
		{RunID: r1.ID, Item: store.NoItem, Message: "kept?"},
		{RunID: r2.ID + 1000, Item: store.NoItem},
	}})
	wantErr(t, "EventAppend(unknown run)", err, store.ErrNotFound)
	err = b.s.EventAppend(b.ctx, &store.EventAppendParams{Events: []*store.Event{
		{RunID: r1.ID, Item: store.NoItem, RunState: store.RunRunning, InstanceState: store.InstanceReady},
	}})
	wantBadInput(t, "EventAppend(both states)", err)
	if got := list(store.EventListParams{RunID: r1.ID}); len(got) != 3 {
		t.Fatalf("EventList() after refused appends = %d events, want 3 (a refused batch adds nothing)", len(got))
	}
}

// testEventTailConcurrent: a reader tailing with After = last cursor sees
// every event exactly once, in cursor order, while several writers append
// batches in transactions.
func testEventTailConcurrent(t *testing.T, h Harness) {
	b := setup(t, h)
	r := b.run(t, b.job(t, "j"), store.OverlapAllow)
	const writers, batches, perBatch = 4, 25, 4
	const total = writers * batches * perBatch

	var wg sync.WaitGroup
	writing := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for n := range batches {
				err := b.s.InTx(b.ctx, func(tx store.Store) error {
					// Two appends per transaction: the cursor order must hold
					// across statements too.
					for half := range 2 {
						evs := make([]*store.Event, perBatch/2)
						for i := range evs {
							evs[i] = &store.Event{RunID: r.ID, Item: store.NoItem,
								Message: fmt.Sprintf("w%d b%d e%d", w, n, half*perBatch/2+i)}
						}
						if err := tx.EventAppend(b.ctx, &store.EventAppendParams{Events: evs}); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					t.Errorf("writer %d: InTx(EventAppend) = %v", w, err)
					return
				}
			}
		})
	}
	go func() { wg.Wait(); close(writing) }()

	seen := map[string]int{}
	var (
		last     int64
		order    []string
		done     bool
		deadline = time.NewTimer(waitTimeout)
		poll     = time.NewTicker(time.Millisecond)
	)
	defer deadline.Stop()
	defer poll.Stop()
	for {
		evs, err := b.s.EventList(b.ctx, &store.EventListParams{RunID: r.ID, After: last, Limit: 7})
		if err != nil {
			t.Fatalf("EventList() = %v", err)
		}
		for _, e := range evs {
			if e.Cursor <= last {
				t.Fatalf("EventList(After %d) returned cursor %d", last, e.Cursor)
			}
			last = e.Cursor
			seen[e.Message]++
			order = append(order, e.Message)
		}
		if len(evs) > 0 {
			continue
		}
		if done {
			break // every writer had committed before this empty read
		}
		select {
		case <-writing:
			done = true
		case <-poll.C:
		case <-deadline.C:
			t.Fatalf("tail saw %d of %d events before the deadline", len(order), total)
		}
	}
	wg.Wait()
	if len(order) != total || len(seen) != total {
		t.Fatalf("tail saw %d events (%d distinct), want %d exactly once each", len(order), len(seen), total)
	}
	// Within a writer's transaction the events keep their append order.
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
	}
	for w := range writers {
		for n := range batches {
			for i := 1; i < perBatch; i++ {
				a, c := fmt.Sprintf("w%d b%d e%d", w, n, i-1), fmt.Sprintf("w%d b%d e%d", w, n, i)
				if pos[a] > pos[c] {
					t.Fatalf("event %q came after %q", a, c)
				}
			}
		}
	}
	if more, err := b.s.EventList(b.ctx, &store.EventListParams{RunID: r.ID, After: last}); err != nil || len(more) != 0 {
		t.Fatalf("EventList(after the last cursor) = %v, %v; want none", more, err)
	}
}

func testLog(t *testing.T, h Harness) {
	b := setup(t, h)
	_, ins := b.readyInstances(t, "j", 2)
	a1, a2 := b.claim(t, ins[0], "etl-01", longTTL), b.claim(t, ins[1], "etl-01", longTTL)
	at := ms(time.Now())
	chunks := []*store.LogChunk{
		{AttemptID: a1.ID, Stream: store.Stdout, Offset: 0, Data: []byte("hello "), At: at},
		{AttemptID: a1.ID, Stream: store.Stderr, Offset: 0, Data: []byte("warn\n"), At: at},
		{AttemptID: a2.ID, Stream: store.Stdout, Offset: 0, Data: []byte("other"), At: at},
		{AttemptID: a1.ID, Stream: store.Stdout, Offset: 6, Data: []byte("world\n\x00\xff"), At: at},
	}
	if err := b.s.LogAppend(b.ctx, &store.LogAppendParams{Chunks: chunks}); err != nil {
		t.Fatalf("LogAppend() = %v", err)
	}
	// A chunk re-sent after a reconnect is stored once.
	if err := b.s.LogAppend(b.ctx, &store.LogAppendParams{Chunks: chunks[3:]}); err != nil {
		t.Fatalf("LogAppend(again) = %v", err)
	}
	got, err := b.s.LogList(b.ctx, &store.LogListParams{AttemptID: a1.ID})
	if err != nil {
		t.Fatalf("LogList() = %v", err)
	}
	if diff := cmp.Diff([]*store.LogChunk{chunks[0], chunks[1], chunks[3]}, got); diff != "" {
		t.Fatalf("LogList() mismatch (-want +got):\n%s", diff)
	}
	// A zero At means now.
	if err := b.s.LogAppend(b.ctx, &store.LogAppendParams{Chunks: []*store.LogChunk{
		{AttemptID: a2.ID, Stream: store.Stderr, Offset: 0, Data: []byte("x")},
	}}); err != nil {
		t.Fatalf("LogAppend() = %v", err)
	}
	got, err = b.s.LogList(b.ctx, &store.LogListParams{AttemptID: a2.ID})
	if err != nil || len(got) != 2 {
		t.Fatalf("LogList(a2) = %v, %v; want 2 chunks", got, err)
	}
	checkTime(t, "chunk At", got[1].At)

	err = b.s.LogAppend(b.ctx, &store.LogAppendParams{Chunks: []*store.LogChunk{
		{AttemptID: a2.ID + 1000, Stream: store.Stdout, Data: []byte("x")},
	}})
	wantErr(t, "LogAppend(unknown attempt)", err, store.ErrNotFound)
	err = b.s.LogAppend(b.ctx, &store.LogAppendParams{Chunks: []*store.LogChunk{{AttemptID: a2.ID, Stream: 3}}})
	wantBadInput(t, "LogAppend(stream 3)", err)
	if none, err := b.s.LogList(b.ctx, &store.LogListParams{AttemptID: a2.ID + 1000}); err != nil || len(none) != 0 {
		t.Fatalf("LogList(unknown) = %v, %v; want none", none, err)
	}
}
