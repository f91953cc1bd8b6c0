-- Version 2: attempts record the run's restart count.

-- run_restart is the run's restart_count when the attempt was claimed.
-- Attempts recorded under version 1 read as 0.
ALTER TABLE attempts ADD COLUMN run_restart INTEGER NOT NULL DEFAULT 0 CHECK (run_restart >= 0);
