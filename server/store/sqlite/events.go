package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/batonhq/baton/server/store"
)

// eventChunk is the most events one INSERT writes; eventColumns the
// values each event binds.
const (
	eventChunk   = 64
	eventColumns = 10
)

// insertEventSQL is the INSERT text for each chunk size.
var insertEventSQL = multiRowInserts(
	"INSERT INTO events (run_id, at, task, item, attempt_id, run_state, instance_state, agent, exit_code, message)",
	eventColumns, eventChunk)

// multiRowInserts returns, at index n from 1 to chunk, head followed by
// VALUES with n rows of columns positional parameters each.
func multiRowInserts(head string, columns, chunk int) []string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?,", columns), ",") + ")"
	out := make([]string, chunk+1)
	for n := 1; n <= chunk; n++ {
		out[n] = head + " VALUES " + strings.TrimSuffix(strings.Repeat(row+",", n), ",")
	}
	return out
}

// EventAppend appends events to their runs' logs; see
// [store.Store.EventAppend]. It sets each event's Cursor, and At when it
// is zero. An unknown run is [store.ErrNotFound].
func (s *Store) EventAppend(ctx context.Context, p *store.EventAppendParams) error {
	for i, e := range p.Events {
		if err := checkEvent(e); err != nil {
			return fmt.Errorf("event append: events[%d]: %w", i, err)
		}
	}
	if len(p.Events) == 0 {
		return nil
	}
	cursors := make([]int64, len(p.Events))
	at := s.now()
	err := s.write(ctx, func(tx *Store) error {
		// Many rows per statement: one INSERT of up to eventChunk rows
		// costs about as much as two single-row ones. Exec and
		// LastInsertId, not RETURNING: RETURNING buffers its rows in a
		// temporary table, and rows in a transaction cost a goroutine each
		// in database/sql.
		for start := 0; start < len(p.Events); start += eventChunk {
			chunk := p.Events[start:min(start+eventChunk, len(p.Events))]
			st, err := tx.stmt(ctx, insertEventSQL[len(chunk)])
			if err != nil {
				return err
			}
			args := make([]any, 0, len(chunk)*eventColumns)
			for _, e := range chunk {
				args = append(args, e.RunID, msOr(e.At, at), e.Task, e.Item, e.AttemptID,
					string(e.RunState), string(e.InstanceState), e.Agent, intOrNil(e.ExitCode), e.Message)
			}
			res, err := st.ExecContext(ctx, args...)
			if isForeignKey(err) {
				return fmt.Errorf("run %d or another of events[%d:%d]: %w", chunk[0].RunID, start, start+len(chunk), store.ErrNotFound)
			}
			if err != nil {
				return err
			}
			last, err := res.LastInsertId()
			if err != nil {
				return err
			}
			// The writer holds SQLite's write lock, so one statement's rows
			// get consecutive rowids ending at the last one.
			for i := range chunk {
				cursors[start+i] = last - int64(len(chunk)-1-i)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("event append: %w", err)
	}
	for i, e := range p.Events {
		e.Cursor = cursors[i]
		e.At = fromMS(msOr(e.At, at))
	}
	return nil
}

func checkEvent(e *store.Event) error {
	switch {
	case e == nil:
		return errors.New("event is nil")
	case e.RunID <= 0:
		return fmt.Errorf("run id %d is not positive", e.RunID)
	case e.Item < store.NoItem:
		return fmt.Errorf("item %d is below %d", e.Item, store.NoItem)
	case e.RunState != "" && e.InstanceState != "":
		return errors.New("both run state and instance state are set")
	case e.RunState != "" && !e.RunState.Valid():
		return fmt.Errorf("run state %q is unknown", e.RunState)
	case e.InstanceState != "" && !e.InstanceState.Valid():
		return fmt.Errorf("instance state %q is unknown", e.InstanceState)
	}
	return nil
}

// EventList returns up to Limit events of a run after a cursor; see
// [store.Store.EventList].
func (s *Store) EventList(ctx context.Context, p *store.EventListParams) ([]*store.Event, error) {
	if p.Limit < 0 {
		return nil, fmt.Errorf("event list of run %d: limit %d is negative", p.RunID, p.Limit)
	}
	limit := p.Limit
	if limit == 0 {
		limit = 1000
	}
	out, err := collect(scanEvent)(s.query(ctx, `
		SELECT id, run_id, at, task, item, attempt_id, run_state, instance_state, agent, exit_code, message
		FROM events WHERE run_id = @run AND id > @after ORDER BY id LIMIT @limit`,
		sql.Named("run", p.RunID), sql.Named("after", p.After), sql.Named("limit", limit)))
	if err != nil {
		return nil, fmt.Errorf("event list of run %d: %w", p.RunID, err)
	}
	return out, nil
}

func scanEvent(sc scanner) (*store.Event, error) {
	var (
		e  store.Event
		at int64
	)
	if err := sc.Scan(&e.Cursor, &e.RunID, &at, &e.Task, &e.Item, &e.AttemptID, &e.RunState,
		&e.InstanceState, &e.Agent, nullInt{&e.ExitCode}, &e.Message); err != nil {
		return nil, err
	}
	e.At = fromMS(at)
	return &e, nil
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
		st, err := tx.stmt(ctx, `
			INSERT INTO log_chunks (attempt_id, stream, byte_offset, data, at)
			VALUES (@attempt, @stream, @offset, @data, @at)
			ON CONFLICT (attempt_id, stream, byte_offset) DO NOTHING`)
		if err != nil {
			return err
		}
		at := s.now()
		for _, c := range p.Chunks {
			data := c.Data
			if data == nil {
				data = []byte{} // NOT NULL: an empty chunk is an empty blob
			}
			_, err := st.ExecContext(ctx, sql.Named("attempt", c.AttemptID), sql.Named("stream", int64(c.Stream)),
				sql.Named("offset", c.Offset), sql.Named("data", data), sql.Named("at", msOr(c.At, at)))
			if isForeignKey(err) {
				return fmt.Errorf("attempt %d: %w", c.AttemptID, store.ErrNotFound)
			}
			if err != nil {
				return err
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
	out, err := collect(scanChunk)(s.query(ctx, `
		SELECT attempt_id, stream, byte_offset, data, at FROM log_chunks WHERE attempt_id = @attempt ORDER BY id`,
		sql.Named("attempt", p.AttemptID)))
	if err != nil {
		return nil, fmt.Errorf("log list of attempt %d: %w", p.AttemptID, err)
	}
	return out, nil
}

func scanChunk(sc scanner) (*store.LogChunk, error) {
	var (
		c  store.LogChunk
		at int64
	)
	if err := sc.Scan(&c.AttemptID, &c.Stream, &c.Offset, &c.Data, &at); err != nil {
		return nil, err
	}
	c.At = fromMS(at)
	return &c, nil
}
