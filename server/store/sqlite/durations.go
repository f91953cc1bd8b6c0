package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/batonhq/baton/server/store"
)

// taskDurations computes TaskDurations in one statement over the partial
// index attempts_succeeded (run_id, task, finished_at; the rowid, which
// breaks ties, ends every index):
//
//   - recent: the job's newest @runs runs, walking runs_job_name backwards.
//   - tasks: the distinct tasks with succeeded attempts in each of those
//     runs, found by a skip scan (each step one index seek for the next
//     task name), so a for-each task's thousands of items are not read.
//   - cand: for each (run, task), its newest @last succeeded attempts with
//     a start time, read in index order; only these can be among the
//     task's newest @last overall.
//   - ranked: ROW_NUMBER over each task's candidates, newest finish first.
//
// The rows read are bounded by @runs × tasks × @last (plus attempts
// without a start time skipped on the way), whatever the job's history
// and however many items a for-each task has.
const taskDurations = `
	WITH RECURSIVE
	recent(id) AS (
	    SELECT id FROM runs WHERE job_name = @job ORDER BY id DESC LIMIT @runs),
	tasks(run_id, task) AS (
	    SELECT r.id, (SELECT min(a.task) FROM attempts a WHERE a.run_id = r.id AND a.state = 'succeeded')
	    FROM recent r
	    UNION ALL
	    SELECT t.run_id, (SELECT min(a.task) FROM attempts a
	                      WHERE a.run_id = t.run_id AND a.state = 'succeeded' AND a.task > t.task)
	    FROM tasks t WHERE t.task IS NOT NULL),
	cand AS (
	    SELECT a.task, max(a.finished_at - a.started_at, 0) AS d, a.finished_at, a.id
	    FROM tasks t
	    JOIN attempts a ON a.id IN (
	        SELECT x.id FROM attempts x
	        WHERE x.run_id = t.run_id AND x.task = t.task AND x.state = 'succeeded'
	          AND x.started_at IS NOT NULL AND x.finished_at IS NOT NULL
	        ORDER BY x.finished_at DESC, x.id DESC LIMIT @last)),
	ranked AS (
	    SELECT task, d, row_number() OVER (PARTITION BY task ORDER BY finished_at DESC, id DESC) AS rn
	    FROM cand)
	SELECT task, sum(d), count(*) FROM ranked WHERE rn <= @last GROUP BY task`

// TaskDurations returns the mean duration of each task's newest succeeded
// attempts; see [store.Store.TaskDurations].
func (s *Store) TaskDurations(ctx context.Context, p *store.TaskDurationsParams) (map[string]time.Duration, error) {
	last, err := checkTaskDurations(p)
	if err != nil {
		return nil, fmt.Errorf("task durations: %w", err)
	}
	out := map[string]time.Duration{}
	rows, err := s.query(ctx, taskDurations, sql.Named("job", p.JobName),
		sql.Named("runs", store.TaskDurationsRuns), sql.Named("last", last))
	if err != nil {
		return nil, fmt.Errorf("task durations of job %s: %w", p.JobName, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			task   string
			sum, n int64
		)
		if err := rows.Scan(&task, &sum, &n); err != nil {
			return nil, fmt.Errorf("task durations of job %s: %w", p.JobName, err)
		}
		out[task] = meanMS(sum, n)
	}
	if err := rows.Err(); err != nil {
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
