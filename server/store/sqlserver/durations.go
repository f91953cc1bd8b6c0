package sqlserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/batonhq/baton/server/store"
)

// qTaskDurations computes TaskDurations in one statement over the
// filtered index IX_attempts_succeeded (run_id, task, finished_at, and the
// clustered key id, which breaks ties):
//
//   - recent: the job's newest @runs runs, read backwards in IX_runs_job_name.
//   - tasks: the distinct tasks with succeeded attempts in each of those
//     runs, from one index range per run (no sort: the range is in task
//     order). For a for-each task this reads its items' index rows, which
//     are narrow; the bound on runs bounds them.
//   - cand: for each (run, task), its newest @last succeeded attempts with
//     a start time, read backwards from the end of that task's range; only
//     these can be among the task's newest @last overall.
//   - ranked: ROW_NUMBER over each task's candidates, newest finish first.
//
// The window sorts at most @runs × tasks × @last rows, whatever the job's
// history. The literal state lets the filtered index match.
var qTaskDurations = register("task_durations", `
WITH recent AS (
    SELECT TOP (@runs) id FROM {{schema}}.runs WHERE job_name = @job ORDER BY id DESC),
tasks AS (
    SELECT DISTINCT a.run_id, a.task
    FROM recent r
    JOIN {{schema}}.attempts a ON a.run_id = r.id
    WHERE a.state = N'succeeded'),
cand AS (
    SELECT t.task, c.d, c.finished_at, c.id
    FROM tasks t
    CROSS APPLY (
        SELECT TOP (@last) x.id, x.finished_at, DATEDIFF_BIG(millisecond, x.started_at, x.finished_at) AS d
        FROM {{schema}}.attempts x
        WHERE x.run_id = t.run_id AND x.task = t.task AND x.state = N'succeeded'
          AND x.started_at IS NOT NULL AND x.finished_at IS NOT NULL
        ORDER BY x.finished_at DESC, x.id DESC) c),
ranked AS (
    SELECT task, CASE WHEN d > 0 THEN d ELSE 0 END AS d,
           ROW_NUMBER() OVER (PARTITION BY task ORDER BY finished_at DESC, id DESC) AS rn
    FROM cand)
SELECT task, SUM(d), COUNT_BIG(*) FROM ranked WHERE rn <= @last GROUP BY task;`)

// TaskDurations returns the mean duration of each task's newest succeeded
// attempts; see [store.Store.TaskDurations].
func (s *Store) TaskDurations(ctx context.Context, p *store.TaskDurationsParams) (map[string]time.Duration, error) {
	last, err := checkTaskDurations(p)
	if err != nil {
		return nil, fmt.Errorf("task durations: %w", err)
	}
	var out map[string]time.Duration
	err = s.read(ctx, func(s *Store) error {
		out = map[string]time.Duration{}
		return s.each(ctx, qTaskDurations, []any{
			sql.Named("job", p.JobName), sql.Named("runs", int64(store.TaskDurationsRuns)), sql.Named("last", int64(last)),
		}, func(r *sql.Rows) error {
			var (
				task   string
				sum, n int64
			)
			if err := r.Scan(&task, &sum, &n); err != nil {
				return err
			}
			out[task] = meanMS(sum, n)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("task durations of job %s: %w", p.JobName, err)
	}
	return out, nil
}

// checkTaskDurations validates p and returns its Last with the default
// applied.
func checkTaskDurations(p *store.TaskDurationsParams) (int, error) {
	if p.JobName == "" {
		return 0, errors.New("job name is empty")
	}
	if p.Last < 0 || p.Last > store.MaxTaskDurationsLast {
		return 0, fmt.Errorf("last %d: want 0 (for 3) to %d", p.Last, store.MaxTaskDurationsLast)
	}
	if p.Last == 0 {
		return 3, nil
	}
	return p.Last, nil
}

// meanMS returns the mean of n durations summing to sum milliseconds,
// exact to the nanosecond. The sum is divided before it is scaled, so only
// a mean beyond time.Duration's range (about 292 years) could overflow.
func meanMS(sum, n int64) time.Duration {
	if n <= 0 {
		return 0
	}
	return time.Duration(sum/n)*time.Millisecond + time.Duration(sum%n)*time.Millisecond/time.Duration(n)
}
