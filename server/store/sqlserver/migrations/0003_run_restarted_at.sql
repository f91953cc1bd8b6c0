-- Version 3: a run records when its latest restart began. Same version
-- number as the SQLite backend's.

-- restarted_at is when the run last left a terminal state (a restart),
-- NULL for a run never restarted. The run timeout counts from it, so a
-- restarted run gets its full time limit also after a control plane
-- restart or failover; started_at keeps the run's first start. Adding a
-- NULL column without a default changes only metadata: it is online.
ALTER TABLE {{schema}}.runs ADD restarted_at DATETIME2(3) NULL;
GO
