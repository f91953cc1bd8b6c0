-- Version 2: attempts record the run's restart count, and an index serves
-- TaskDurations.

-- run_restart is the run's restart_count when the attempt was claimed.
-- Attempts recorded under version 1 read as 0.
ALTER TABLE attempts ADD COLUMN run_restart INTEGER NOT NULL DEFAULT 0 CHECK (run_restart >= 0);

-- TaskDurations: the succeeded attempts of one run, by task and finish
-- time (the rowid, which breaks ties, ends every index). The query skips
-- from task to task in it and reads only each task's newest attempts of
-- each of the job's newest runs.
CREATE INDEX attempts_succeeded ON attempts (run_id, task, finished_at)
    WHERE state = 'succeeded';
