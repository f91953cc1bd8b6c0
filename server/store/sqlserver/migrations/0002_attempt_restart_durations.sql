-- Version 2: attempts record the run's restart count. Same version number
-- as the SQLite backend's.

-- run_restart is the run's restart_count when the attempt was claimed.
-- Attempts recorded under version 1 read as 0. The CHECK is declared with
-- the column: a later statement of this batch could not name the new
-- column.
ALTER TABLE {{schema}}.attempts ADD run_restart INT NOT NULL
    CONSTRAINT DF_attempts_run_restart DEFAULT 0
    CONSTRAINT CK_attempts_run_restart CHECK (run_restart >= 0);
GO
