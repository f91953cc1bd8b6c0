package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/batonhq/baton/server/store"
)

const instanceCols = `id, run_id, task, item, item_value, state, attempts, attempt_id, outputs, error,
	ready_at, started_at, finished_at`

func scanInstance(sc scanner) (*store.Instance, error) {
	var in store.Instance
	if err := sc.Scan(&in.ID, &in.RunID, &in.Task, &in.Item, &in.ItemValue, &in.State, &in.Attempts,
		zeroInt{&in.AttemptID}, jsonMap{&in.Outputs}, &in.Error,
		nullTime{&in.ReadyAt}, nullTime{&in.StartedAt}, nullTime{&in.FinishedAt}); err != nil {
		return nil, err
	}
	return &in, nil
}

func checkInstances(ins []store.InstanceInit) error {
	for i, in := range ins {
		if in.Task == "" {
			return fmt.Errorf("instances[%d]: task is empty", i)
		}
		if in.Item < store.NoItem {
			return fmt.Errorf("instances[%d] (%s): item %d is below %d", i, in.Task, in.Item, store.NoItem)
		}
		if in.State != store.InstancePending && in.State != store.InstanceReady {
			return fmt.Errorf("instances[%d] (%s): state %q: want pending or ready", i, in.Task, in.State)
		}
	}
	return nil
}

// instanceChunk is the most instances one INSERT writes; instanceColumns
// the values each binds.
const (
	instanceChunk   = 64
	instanceColumns = 6
)

// insertInstanceSQL is the INSERT text for each chunk size.
var insertInstanceSQL = multiRowInserts(
	"INSERT INTO task_instances (run_id, task, item, item_value, state, ready_at)", instanceColumns, instanceChunk)

// insertInstances adds task instances to run; it must run in a
// transaction. A duplicate (task, item) is store.ErrConflict.
//
// Many rows per statement, as for events: a run of 10,000 tasks is 157
// statements, not 10,000. The instances are built from what was inserted
// (a new instance has no attempts, outputs or times but ready_at), their
// ids from LastInsertId: the writer holds SQLite's write lock, so one
// statement's rows get consecutive ids ending at the last one.
func (s *Store) insertInstances(ctx context.Context, run int64, ins []store.InstanceInit) ([]*store.Instance, error) {
	if len(ins) == 0 {
		return nil, nil
	}
	at := s.now()
	out := make([]*store.Instance, len(ins))
	args := make([]any, 0, min(len(ins), instanceChunk)*instanceColumns)
	for start := 0; start < len(ins); start += instanceChunk {
		chunk := ins[start:min(start+instanceChunk, len(ins))]
		st, err := s.stmt(ctx, insertInstanceSQL[len(chunk)])
		if err != nil {
			return nil, err
		}
		args = args[:0]
		for _, in := range chunk {
			var ready any
			if in.State == store.InstanceReady {
				ready = at
			}
			args = append(args, run, in.Task, in.Item, in.ItemValue, string(in.State), ready)
		}
		res, err := st.ExecContext(ctx, args...)
		switch {
		case isUnique(err):
			// The failed statement changed nothing; name the instance.
			return nil, s.duplicateInstance(ctx, run, chunk)
		case isForeignKey(err):
			return nil, fmt.Errorf("run %d: %w", run, store.ErrNotFound)
		case err != nil:
			return nil, err
		}
		last, err := res.LastInsertId()
		if err != nil {
			return nil, err
		}
		for i, in := range chunk {
			o := &store.Instance{
				ID: last - int64(len(chunk)-1-i), RunID: run, Task: in.Task, Item: in.Item,
				ItemValue: in.ItemValue, State: in.State,
			}
			if in.State == store.InstanceReady {
				o.ReadyAt = fromMS(at)
			}
			out[start+i] = o
		}
	}
	return out, nil
}

// duplicateInstance returns the store.ErrConflict for the first instance of
// chunk that already exists in run or twice in chunk.
func (s *Store) duplicateInstance(ctx context.Context, run int64, chunk []store.InstanceInit) error {
	seen := make(map[store.InstanceInit]bool, len(chunk))
	for _, in := range chunk {
		key := store.InstanceInit{Task: in.Task, Item: in.Item}
		var n int
		err := s.queryRow(ctx, `SELECT count(*) FROM task_instances WHERE run_id = @run AND task = @task AND item = @item`,
			[]any{sql.Named("run", run), sql.Named("task", in.Task), sql.Named("item", in.Item)}, &n)
		if err != nil {
			return err
		}
		if n > 0 || seen[key] {
			return fmt.Errorf("instance %s item %d exists: %w", in.Task, in.Item, store.ErrConflict)
		}
		seen[key] = true
	}
	return fmt.Errorf("an instance of run %d exists: %w", run, store.ErrConflict)
}

// InstanceCreate adds task instances to a run; see
// [store.Store.InstanceCreate]. It returns [store.ErrNotFound] for an
// unknown run and [store.ErrConflict] when an instance (task, item) exists.
func (s *Store) InstanceCreate(ctx context.Context, p *store.InstanceCreateParams) ([]*store.Instance, error) {
	if err := checkInstances(p.Instances); err != nil {
		return nil, fmt.Errorf("instance create in run %d: %w", p.RunID, err)
	}
	var out []*store.Instance
	err := s.write(ctx, func(tx *Store) (err error) {
		out, err = tx.insertInstances(ctx, p.RunID, p.Instances)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("instance create in run %d: %w", p.RunID, err)
	}
	return out, nil
}

// InstanceList returns a run's task instances ordered by id.
func (s *Store) InstanceList(ctx context.Context, p *store.InstanceListParams) ([]*store.Instance, error) {
	out, err := collect(scanInstance)(s.query(ctx,
		`SELECT `+instanceCols+` FROM task_instances WHERE run_id = @run ORDER BY id`, sql.Named("run", p.RunID)))
	if err != nil {
		return nil, fmt.Errorf("instance list of run %d: %w", p.RunID, err)
	}
	return out, nil
}

// transitionInstance is the guarded instance transition; @attempt = 0
// skips the fence.
const transitionInstance = `
	UPDATE task_instances SET
	    state = @to,
	    outputs = coalesce(@outputs, outputs),
	    error = @error,
	    ready_at = CASE WHEN @to = 'ready' THEN @at ELSE ready_at END,
	    started_at = CASE WHEN @to = 'running' THEN @at ELSE started_at END,
	    finished_at = CASE WHEN @done THEN @at END
	WHERE id = @id AND instr(@from, '|' || state || '|') > 0
	  AND (@attempt = 0 OR attempt_id = @attempt)`

// InstanceTransition moves an instance between states; see
// [store.Store.InstanceTransition].
func (s *Store) InstanceTransition(ctx context.Context, p *store.InstanceTransitionParams) error {
	if err := store.CheckStates("from", p.From); err != nil {
		return fmt.Errorf("instance transition %d: %w", p.ID, err)
	}
	if !p.To.Valid() {
		return fmt.Errorf("instance transition %d: to: unknown state %q", p.ID, p.To)
	}
	var outputs any
	if p.Outputs != nil {
		outputs = encodeMap(p.Outputs)
	}
	err := s.write(ctx, func(tx *Store) error {
		res, err := tx.exec(ctx, transitionInstance,
			sql.Named("id", p.ID), sql.Named("from", stateSet(p.From)), sql.Named("to", string(p.To)),
			sql.Named("attempt", p.AttemptID), sql.Named("outputs", outputs), sql.Named("error", p.Error),
			sql.Named("done", p.To.Done()), sql.Named("at", s.now()))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		var (
			state   store.InstanceState
			attempt int64
		)
		err = tx.queryRow(ctx, `SELECT state, attempt_id FROM task_instances WHERE id = @id`,
			[]any{sql.Named("id", p.ID)}, &state, zeroInt{&attempt})
		if errors.Is(err, sql.ErrNoRows) {
			return store.ErrNotFound
		}
		if err != nil {
			return err
		}
		if p.AttemptID != 0 && attempt != p.AttemptID {
			return fmt.Errorf("attempt %d is not the latest (%d): %w", p.AttemptID, attempt, store.ErrConflict)
		}
		return fmt.Errorf("instance is %s: %w", state, store.ErrConflict)
	})
	if err != nil {
		return fmt.Errorf("instance transition %d to %s: %w", p.ID, p.To, err)
	}
	return nil
}
