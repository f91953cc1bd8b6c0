package sqlserver

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	mssql "github.com/microsoft/go-mssqldb"

	"github.com/batonhq/baton/server/store"
)

// instanceCols are the columns scanInstance reads; outInstanceCols the
// same from OUTPUT.
const (
	instanceCols = `id, run_id, task, item, item_value, state, attempts, attempt_id, outputs, error,
    ready_at, started_at, finished_at`
	outInstanceCols = `inserted.id, inserted.run_id, inserted.task, inserted.item, inserted.item_value,
    inserted.state, inserted.attempts, inserted.attempt_id, inserted.outputs, inserted.error,
    inserted.ready_at, inserted.started_at, inserted.finished_at`
)

var (
	qRunExists = register("run_exists", `
SELECT COUNT(*) FROM {{schema}}.runs WHERE id = @run`)

	// Instances travel as one JSON array, so a for-each expansion of
	// thousands of items is one statement with one cached plan. The
	// existing-instance check takes range locks, so the insert that follows
	// cannot hit the unique key (which would abort the transaction).
	qInstanceExisting = register("instance_existing", `
SELECT TOP (1) t.task, t.item
FROM OPENJSON(@instances) WITH (task NVARCHAR(400) '$.task', item INT '$.item') j
JOIN {{schema}}.task_instances t WITH (UPDLOCK, HOLDLOCK)
    ON t.run_id = @run AND t.task = j.task COLLATE Latin1_General_100_BIN2 AND t.item = j.item`)

	// ORDER BY the array index makes the identity values follow the input
	// order (an INSERT ... SELECT ... ORDER BY guarantee).
	qInstanceInsert = register("instance_insert", `
INSERT INTO {{schema}}.task_instances (run_id, task, item, item_value, state, ready_at)
OUTPUT `+outInstanceCols+`
SELECT @run, j.task, j.item, j.item_value, j.state, CASE WHEN j.state = N'ready' THEN t.now END
FROM OPENJSON(@instances) a
CROSS APPLY OPENJSON(a.value) WITH (
    task NVARCHAR(400) '$.task', item INT '$.item', item_value NVARCHAR(MAX) '$.value', state NVARCHAR(16) '$.state') j
CROSS APPLY (SELECT CAST(SYSUTCDATETIME() AS DATETIME2(3)) AS now) t
ORDER BY CAST(a.[key] AS INT)`)

	qInstanceList = register("instance_list", `
SELECT `+instanceCols+` FROM {{schema}}.task_instances WHERE run_id = @run ORDER BY id`)

	// qInstanceTransition is the guarded instance transition; @attempt = 0
	// skips the fence.
	qInstanceTransition = register("instance_transition", `
UPDATE i SET
    state = @to,
    outputs = COALESCE(@outputs, i.outputs),
    error = @error,
    ready_at = CASE WHEN @to = N'ready' THEN t.now ELSE i.ready_at END,
    started_at = CASE WHEN @to = N'running' THEN t.now ELSE i.started_at END,
    finished_at = CASE WHEN @done = 1 THEN t.now END
FROM {{schema}}.task_instances i
CROSS APPLY (SELECT CAST(SYSUTCDATETIME() AS DATETIME2(3)) AS now) t
WHERE i.id = @id AND CHARINDEX(N'|' + i.state + N'|', @from) > 0
  AND (@attempt = 0 OR i.attempt_id = @attempt)`)

	qInstanceState = register("instance_state", `
SELECT state, attempt_id FROM {{schema}}.task_instances WHERE id = @id`)
)

func scanInstance(sc interface{ Scan(...any) error }) (*store.Instance, error) {
	var in store.Instance
	if err := sc.Scan(&in.ID, &in.RunID, &in.Task, &in.Item, &in.ItemValue, &in.State, &in.Attempts,
		zeroInt{&in.AttemptID}, jsonMap{&in.Outputs}, &in.Error,
		nullTime{&in.ReadyAt}, nullTime{&in.StartedAt}, nullTime{&in.FinishedAt}); err != nil {
		return nil, err
	}
	return &in, nil
}

func checkInstances(ins []store.InstanceInit) error {
	type key struct {
		task string
		item int
	}
	seen := make(map[key]bool, len(ins))
	for i, in := range ins {
		if err := checkKey(fmt.Sprintf("instances[%d]: task", i), in.Task, false); err != nil {
			return err
		}
		if in.Item < store.NoItem || in.Item > 1<<31-1 {
			return fmt.Errorf("instances[%d] (%s): item %d is out of range", i, in.Task, in.Item)
		}
		if in.State != store.InstancePending && in.State != store.InstanceReady {
			return fmt.Errorf("instances[%d] (%s): state %q: want pending or ready", i, in.Task, in.State)
		}
		k := key{in.Task, in.Item}
		if seen[k] {
			return fmt.Errorf("instances[%d] (%s): item %d is listed twice: %w", i, in.Task, in.Item, store.ErrConflict)
		}
		seen[k] = true
	}
	return nil
}

// instanceJSON is one element of the @instances array.
type instanceJSON struct {
	Task  string `json:"task"`
	Item  int    `json:"item"`
	Value string `json:"value"`
	State string `json:"state"`
}

// insertInstances adds task instances to run, in the order given; it
// must run in a transaction. An existing (task, item) is
// store.ErrConflict, and nothing is inserted then.
func (s *Store) insertInstances(ctx context.Context, run int64, ins []store.InstanceInit) ([]*store.Instance, error) {
	if len(ins) == 0 {
		return nil, nil
	}
	arr := make([]instanceJSON, len(ins))
	for i, in := range ins {
		arr[i] = instanceJSON{Task: in.Task, Item: in.Item, Value: in.ItemValue, State: string(in.State)}
	}
	b, err := json.Marshal(arr)
	if err != nil {
		return nil, fmt.Errorf("encode instances: %w", err)
	}
	doc := mssql.NVarCharMax(b)
	var (
		task string
		item int
	)
	err = s.one(ctx, qInstanceExisting, []any{sql.Named("instances", doc), sql.Named("run", run)}, &task, &item)
	if err == nil {
		return nil, fmt.Errorf("instance %s item %d exists: %w", task, item, store.ErrConflict)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	out := make([]*store.Instance, 0, len(ins))
	err = s.each(ctx, qInstanceInsert, []any{sql.Named("run", run), sql.Named("instances", doc)}, func(r *sql.Rows) error {
		in, err := scanInstance(r)
		if err == nil {
			out = append(out, in)
		}
		return err
	})
	if err != nil {
		return nil, interpretError(err, store.ErrConflict)
	}
	// OUTPUT returns rows in no particular order; ids follow the input.
	slices.SortFunc(out, func(a, b *store.Instance) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
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
		var n int
		if err := tx.one(ctx, qRunExists, []any{sql.Named("run", p.RunID)}, &n); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("run %d: %w", p.RunID, store.ErrNotFound)
		}
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
	var out []*store.Instance
	err := s.read(ctx, func(s *Store) error {
		out = nil
		return s.each(ctx, qInstanceList, []any{sql.Named("run", p.RunID)}, func(r *sql.Rows) error {
			in, err := scanInstance(r)
			if err == nil {
				out = append(out, in)
			}
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("instance list of run %d: %w", p.RunID, err)
	}
	return out, nil
}

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
		n, err := tx.exec(ctx, qInstanceTransition,
			sql.Named("id", p.ID), sql.Named("from", stateSet(p.From)), sql.Named("to", string(p.To)),
			sql.Named("attempt", p.AttemptID), sql.Named("outputs", outputs), sql.Named("error", nvarcharMax(p.Error)),
			sql.Named("done", p.To.Done()))
		if err != nil || n == 1 {
			return err
		}
		var (
			state   store.InstanceState
			attempt int64
		)
		err = tx.one(ctx, qInstanceState, []any{sql.Named("id", p.ID)}, &state, zeroInt{&attempt})
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
