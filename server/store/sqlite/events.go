package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/batonhq/baton/server/store"
)

const insertEvent = `
	INSERT INTO events (run_id, at, task, item, attempt_id, run_state, instance_state, agent, exit_code, message)
	VALUES (@run, @at, @task, @item, @attempt, @run_state, @instance_state, @agent, @exit, @message)`

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
	at := now()
	err := s.write(ctx, func(tx *Store) error {
		st, err := tx.stmt(ctx, insertEvent)
		if err != nil {
			return err
		}
		for i, e := range p.Events {
			// Exec and LastInsertId, not RETURNING: RETURNING buffers its
			// rows in a temporary table, and rows in a transaction cost a
			// goroutine each in database/sql.
			res, err := st.ExecContext(ctx, sql.Named("run", e.RunID), sql.Named("at", msOr(e.At, at)),
				sql.Named("task", e.Task), sql.Named("item", e.Item), sql.Named("attempt", e.AttemptID),
				sql.Named("run_state", string(e.RunState)), sql.Named("instance_state", string(e.InstanceState)),
				sql.Named("agent", e.Agent), sql.Named("exit", intOrNil(e.ExitCode)), sql.Named("message", e.Message))
			if isForeignKey(err) {
				return fmt.Errorf("run %d: %w", e.RunID, store.ErrNotFound)
			}
			if err != nil {
				return err
			}
			if cursors[i], err = res.LastInsertId(); err != nil {
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
	case e.RunState != "" && !validRunState(e.RunState):
		return fmt.Errorf("run state %q is unknown", e.RunState)
	case e.InstanceState != "" && !validInstanceState(e.InstanceState):
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
		at := now()
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
