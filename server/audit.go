package server

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/batonhq/baton/server/store"
)

// Audit trail defaults.
const (
	// DefaultAuditRetention is how long audit records are kept: more than
	// a year, so a yearly review finds the whole year.
	DefaultAuditRetention = 400 * 24 * time.Hour
	// auditQueue is how many records may wait for the writer.
	auditQueue = 4096
	// auditBatch is the most records one store call appends.
	auditBatch = 256
	// auditSyncTimeout bounds the store write a mutating call makes itself
	// when the queue is full.
	auditSyncTimeout = 5 * time.Second
	// purgeEvery is how often old records are purged; purgeBatch how many
	// one statement removes, and purgePause the rest between statements,
	// so a purge never holds the store for long.
	purgeEvery = time.Hour
	purgeBatch = 500
	purgePause = 50 * time.Millisecond
	// dropLogEvery spaces the log lines about dropped records.
	dropLogEvery = 10 * time.Second
)

// auditStore is the part of the store the audit writer uses. Its writes
// are not fenced by the leader lease: a standby records what it refuses.
type auditStore interface {
	AuditAppend(ctx context.Context, p *store.AuditAppendParams) error
	AuditPurge(ctx context.Context, p *store.AuditPurgeParams) (int, error)
}

// auditor appends audit records asynchronously, through a bounded queue,
// so the API never waits for the store on their account, and purges
// records older than the retention.
//
// Nothing is dropped silently. When the queue is full, a mutating call's
// record is written by the call itself (it is writing to the store anyway);
// a refused call's record, under a flood of refused calls, is dropped,
// counted in baton_audit_dropped_total and logged (at most once every 10s,
// with the count). A record the store refuses is logged in full.
type auditor struct {
	st        auditStore
	log       *slog.Logger
	clock     func() time.Time
	retention time.Duration
	queue     chan *store.AuditRecord

	dropped prometheus.Counter
	written prometheus.Counter

	mu     sync.RWMutex // held for reading while sending to queue
	closed bool

	dropMu      sync.Mutex
	dropsUnsaid int
	dropSaid    time.Time
}

func newAuditor(st auditStore, log *slog.Logger, clock func() time.Time, retention time.Duration, reg prometheus.Registerer, queue int) *auditor {
	a := &auditor{
		st: st, log: log.With(slog.String("component", "audit")), clock: clock, retention: retention,
		queue: make(chan *store.AuditRecord, queue),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "baton_audit_dropped_total",
			Help: "Audit records not stored: refused calls beyond the audit queue, or records the store refused (each is logged)."}),
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "baton_audit_records_total",
			Help: "Audit records stored."}),
	}
	reg.MustRegister(a.dropped, a.written)
	return a
}

func (a *auditor) now() time.Time { return a.clock().UTC() }

// record queues r. A mustKeep record (a mutating call's) is written at once
// when the queue is full; any other is then dropped and counted. It never
// blocks longer than one store write.
func (a *auditor) record(ctx context.Context, r *store.AuditRecord, mustKeep bool) {
	a.mu.RLock()
	if !a.closed {
		select {
		case a.queue <- r:
			a.mu.RUnlock()
			return
		default:
		}
	}
	closed := a.closed
	a.mu.RUnlock()
	if !mustKeep && !closed {
		a.drop(ctx, r)
		return
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditSyncTimeout)
	defer cancel()
	a.write(wctx, []*store.AuditRecord{r})
}

// drop counts a record dropped for want of queue space.
func (a *auditor) drop(ctx context.Context, r *store.AuditRecord) {
	a.dropped.Inc()
	a.dropMu.Lock()
	a.dropsUnsaid++
	now := a.clock()
	if now.Sub(a.dropSaid) < dropLogEvery {
		a.dropMu.Unlock()
		return
	}
	n := a.dropsUnsaid
	a.dropsUnsaid, a.dropSaid = 0, now
	a.dropMu.Unlock()
	a.log.WarnContext(ctx, "audit queue full: dropped records of refused calls (see baton_audit_dropped_total)",
		slog.Int("dropped", n), slog.String("last_who", r.Who), slog.String("last_peer", r.Peer),
		slog.String("last_method", r.Method), slog.String("last_code", r.Code))
}

// write appends records; on failure each is logged, so none is lost
// without a trace.
func (a *auditor) write(ctx context.Context, recs []*store.AuditRecord) {
	err := a.st.AuditAppend(ctx, &store.AuditAppendParams{Records: recs})
	if err == nil {
		a.written.Add(float64(len(recs)))
		return
	}
	a.dropped.Add(float64(len(recs)))
	for _, r := range recs {
		a.log.ErrorContext(ctx, "cannot store an audit record", slog.Any("error", err),
			slog.Time("at", r.At), slog.String("who", r.Who), slog.String("peer", r.Peer), slog.String("method", r.Method),
			slog.String("job", r.Job), slog.Int64("run_id", r.RunID), slog.String("code", r.Code), slog.String("message", r.Message))
	}
}

// run writes queued records until ctx is done, then writes what is left
// (within auditSyncTimeout) and writes any later record itself. It purges
// old records at start and every purgeEvery.
func (a *auditor) run(ctx context.Context) {
	purge := time.NewTimer(0)
	defer purge.Stop()
	for {
		select {
		case r := <-a.queue:
			a.write(ctx, a.batch(r))
		case <-purge.C:
			a.purge(ctx)
			purge.Reset(purgeEvery)
		case <-ctx.Done():
			a.close(ctx)
			return
		}
	}
}

// close stops taking records into the queue and writes those left in it.
func (a *auditor) close(ctx context.Context) {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditSyncTimeout)
	defer cancel()
	for {
		select {
		case r := <-a.queue:
			a.write(wctx, a.batch(r))
		default:
			return
		}
	}
}

// batch returns first and the records queued behind it, up to auditBatch.
func (a *auditor) batch(first *store.AuditRecord) []*store.AuditRecord {
	recs := []*store.AuditRecord{first}
	for len(recs) < auditBatch {
		select {
		case r := <-a.queue:
			recs = append(recs, r)
		default:
			return recs
		}
	}
	return recs
}

// purge removes records older than the retention, purgeBatch at a time.
func (a *auditor) purge(ctx context.Context) {
	before := a.clock().Add(-a.retention)
	total := 0
	for {
		n, err := a.st.AuditPurge(ctx, &store.AuditPurgeParams{Before: before, Limit: purgeBatch})
		total += n
		if err != nil {
			if ctx.Err() == nil {
				a.log.WarnContext(ctx, "cannot purge old audit records", slog.Any("error", err))
			}
			return
		}
		if n < purgeBatch {
			break
		}
		t := time.NewTimer(purgePause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
	if total > 0 {
		a.log.InfoContext(ctx, "purged old audit records", slog.Int("records", total), slog.Time("before", before))
	}
}
