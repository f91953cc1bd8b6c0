-- Version 2: attempts record the run's restart count, and an index serves
-- TaskDurations. Same version number as the SQLite backend's.

-- run_restart is the run's restart_count when the attempt was claimed.
-- Attempts recorded under version 1 read as 0. The CHECK is declared with
-- the column: a later statement of this batch could not name the new
-- column.
ALTER TABLE {{schema}}.attempts ADD run_restart INT NOT NULL
    CONSTRAINT DF_attempts_run_restart DEFAULT 0
    CONSTRAINT CK_attempts_run_restart CHECK (run_restart >= 0);
GO

-- TaskDurations: the succeeded attempts of one run, by task and finish
-- time; the clustered key id, which breaks ties, ends the key. The query
-- reads it only for the job's newest runs, and per (run, task) only the
-- newest attempts, backwards from the key's end. started_at and state are
-- included so the index covers the query (with state in the index the
-- filter needs no lookup to check).
CREATE NONCLUSTERED INDEX IX_attempts_succeeded ON {{schema}}.attempts (run_id, task, finished_at)
    INCLUDE (started_at, state)
    WHERE state = N'succeeded';
GO
