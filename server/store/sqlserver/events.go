package sqlserver

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"time"

	mssql "github.com/microsoft/go-mssqldb"

	"github.com/batonhq/baton/server/store"
)

var (
	// qEventLockRun locks a run's row until the transaction ends (and
	// finds an unknown run without a foreign key error, which would abort
	// the transaction). Every event insert of a run happens under this
	// lock, so a run's events are inserted, and take their rowversions, in
	// the order their transactions commit.
	qEventLockRun = register("event_lock_run", `
SELECT COUNT(*) FROM {{schema}}.runs WITH (UPDLOCK, ROWLOCK) WHERE id = @run`)

	// One row per statement: each insert takes the next rowversion, so a
	// batch's cursors follow its order.
	qEventInsert = register("event_insert", `
INSERT INTO {{schema}}.events (run_id, at, task, item, attempt_id, run_state, instance_state, agent, exit_code, message)
OUTPUT CAST(inserted.rv AS BIGINT), inserted.at
VALUES (@run, COALESCE(@at, CAST(SYSUTCDATETIME() AS DATETIME2(3))), @task, @item, @attempt,
        @run_state, @instance_state, @agent, @exit, @message)`)

	// The cursor is the rowversion. Rowversions are taken when a row is
	// written, not when it commits; but a run's events are written one
	// transaction at a time (qEventLockRun), so no event of the run with a
	// lower rowversion than one a reader sees can still commit. Uncommitted
	// rows are never returned: a locking read waits for them, a snapshot
	// read (READ_COMMITTED_SNAPSHOT) does not see them.
	qEventList = register("event_list", `
SELECT TOP (@limit) CAST(rv AS BIGINT), run_id, at, task, item, attempt_id, run_state, instance_state,
       agent, exit_code, message
FROM {{schema}}.events
WHERE run_id = @run AND rv > CAST(@after AS BINARY(8))
ORDER BY rv`)

	// A chunk re-sent after a reconnect is stored once. The data travels
	// as hex in VARCHAR(MAX): a []byte parameter would be declared
	// varbinary(len), one plan per length.
	qLogInsert = register("log_insert", `
INSERT INTO {{schema}}.log_chunks (attempt_id, stream, byte_offset, data, at)
SELECT @attempt, @stream, @offset, CONVERT(VARBINARY(MAX), @data, 2),
       COALESCE(@at, CAST(SYSUTCDATETIME() AS DATETIME2(3)))
WHERE EXISTS (SELECT 1 FROM {{schema}}.attempts WHERE id = @attempt)
  AND NOT EXISTS (SELECT 1 FROM {{schema}}.log_chunks WITH (UPDLOCK, HOLDLOCK)
                  WHERE attempt_id = @attempt AND stream = @stream AND byte_offset = @offset)`)

	qAttemptExists = register("attempt_exists", `
SELECT COUNT(*) FROM {{schema}}.attempts WHERE id = @attempt`)

	qLogList = register("log_list", `
SELECT attempt_id, stream, byte_offset, data, at
FROM {{schema}}.log_chunks WHERE attempt_id = @attempt ORDER BY id`)
)

// EventAppend appends events to their runs' logs; see
// [store.Store.EventAppend]. It sets each event's Cursor, and At when it
// is zero. An unknown run is [store.ErrNotFound], and then nothing is
// appended. It locks each run's row until the transaction ends, so the
// events of one run are appended by one transaction at a time.
func (s *Store) EventAppend(ctx context.Context, p *store.EventAppendParams) error {
	for i, e := range p.Events {
		if err := checkEvent(e); err != nil {
			return fmt.Errorf("event append: events[%d]: %w", i, err)
		}
	}
	if len(p.Events) == 0 {
		return nil
	}
	// Runs are locked in id order, so two appenders of the same runs
	// cannot deadlock on each other.
	runs := make([]int64, 0, len(p.Events))
	for _, e := range p.Events {
		runs = append(runs, e.RunID)
	}
	slices.Sort(runs)
	runs = slices.Compact(runs)
	cursors := make([]int64, len(p.Events))
	ats := make([]time.Time, len(p.Events))
	err := s.write(ctx, func(tx *Store) error {
		for _, run := range runs {
			var n int
			if err := tx.one(ctx, qEventLockRun, []any{sql.Named("run", run)}, &n); err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("run %d: %w", run, store.ErrNotFound)
			}
		}
		for i, e := range p.Events {
			err := tx.one(ctx, qEventInsert, []any{
				sql.Named("run", e.RunID), sql.Named("at", timeOrNil(e.At)), sql.Named("task", e.Task),
				sql.Named("item", int32(e.Item)), sql.Named("attempt", e.AttemptID),
				sql.Named("run_state", string(e.RunState)), sql.Named("instance_state", string(e.InstanceState)),
				sql.Named("agent", e.Agent), sql.Named("exit", intOrNil(e.ExitCode)),
				sql.Named("message", nvarcharMax(e.Message)),
			}, &cursors[i], utcTime{&ats[i]})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("event append: %w", err)
	}
	for i, e := range p.Events {
		e.Cursor = cursors[i]
		e.At = ats[i]
	}
	return nil
}

func checkEvent(e *store.Event) error {
	switch {
	case e == nil:
		return errors.New("event is nil")
	case e.RunID <= 0:
		return fmt.Errorf("run id %d is not positive", e.RunID)
	case e.Item < store.NoItem || e.Item > 1<<31-1:
		return fmt.Errorf("item %d is out of range", e.Item)
	case e.RunState != "" && e.InstanceState != "":
		return errors.New("both run state and instance state are set")
	case e.RunState != "" && !e.RunState.Valid():
		return fmt.Errorf("run state %q is unknown", e.RunState)
	case e.InstanceState != "" && !e.InstanceState.Valid():
		return fmt.Errorf("instance state %q is unknown", e.InstanceState)
	}
	if err := checkKey("task", e.Task, true); err != nil {
		return err
	}
	return checkKey("agent", e.Agent, true)
}

// EventList returns up to Limit events of a run after a cursor; see
// [store.Store.EventList]. Events of a transaction that is still open
// appear once it commits (inside that transaction they are visible).
func (s *Store) EventList(ctx context.Context, p *store.EventListParams) ([]*store.Event, error) {
	if p.Limit < 0 {
		return nil, fmt.Errorf("event list of run %d: limit %d is negative", p.RunID, p.Limit)
	}
	limit := p.Limit
	if limit == 0 {
		limit = 1000
	}
	var out []*store.Event
	err := s.read(ctx, func(s *Store) error {
		out = nil
		return s.each(ctx, qEventList, []any{
			sql.Named("limit", int64(limit)), sql.Named("run", p.RunID), sql.Named("after", p.After),
		}, func(r *sql.Rows) error {
			var e store.Event
			if err := r.Scan(&e.Cursor, &e.RunID, utcTime{&e.At}, &e.Task, &e.Item, &e.AttemptID, &e.RunState,
				&e.InstanceState, &e.Agent, nullInt{&e.ExitCode}, &e.Message); err != nil {
				return err
			}
			out = append(out, &e)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("event list of run %d: %w", p.RunID, err)
	}
	return out, nil
}

// LogAppend stores chunks of attempts' output; see [store.Store.LogAppend].
// A chunk whose attempt, stream and offset are already stored is ignored,
// so an agent may re-send after a reconnect. An unknown attempt is
// [store.ErrNotFound].
func (s *Store) LogAppend(ctx context.Context, p *store.LogAppendParams) error {
	for i, c := range p.Chunks {
		switch {
		case c == nil:
			return fmt.Errorf("log append: chunks[%d] is nil", i)
		case c.Stream != store.Stdout && c.Stream != store.Stderr:
			return fmt.Errorf("log append: chunks[%d]: stream %d: want 1 (stdout) or 2 (stderr)", i, c.Stream)
		case c.Offset < 0:
			return fmt.Errorf("log append: chunks[%d]: offset %d is negative", i, c.Offset)
		}
	}
	if len(p.Chunks) == 0 {
		return nil
	}
	err := s.write(ctx, func(tx *Store) error {
		for _, c := range p.Chunks {
			n, err := tx.exec(ctx, qLogInsert, sql.Named("attempt", c.AttemptID), sql.Named("stream", uint8(c.Stream)),
				sql.Named("offset", c.Offset), sql.Named("data", mssql.VarCharMax(hex.EncodeToString(c.Data))),
				sql.Named("at", timeOrNil(c.At)))
			if err != nil {
				return err
			}
			if n == 1 {
				continue
			}
			var exists int
			if err := tx.one(ctx, qAttemptExists, []any{sql.Named("attempt", c.AttemptID)}, &exists); err != nil {
				return err
			}
			if exists == 0 {
				return fmt.Errorf("attempt %d: %w", c.AttemptID, store.ErrNotFound)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("log append: %w", err)
	}
	return nil
}

// LogList returns an attempt's stored chunks in the order they arrived.
func (s *Store) LogList(ctx context.Context, p *store.LogListParams) ([]*store.LogChunk, error) {
	var out []*store.LogChunk
	err := s.read(ctx, func(s *Store) error {
		out = nil
		return s.each(ctx, qLogList, []any{sql.Named("attempt", p.AttemptID)}, func(r *sql.Rows) error {
			var (
				c      store.LogChunk
				stream uint8
			)
			if err := r.Scan(&c.AttemptID, &stream, &c.Offset, &c.Data, utcTime{&c.At}); err != nil {
				return err
			}
			c.Stream = store.LogStream(stream)
			if c.Data == nil {
				c.Data = []byte{}
			}
			out = append(out, &c)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("log list of attempt %d: %w", p.AttemptID, err)
	}
	return out, nil
}
