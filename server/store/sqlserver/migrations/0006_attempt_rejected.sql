-- Version 6: an attempt may be 'rejected': its agent's allowlist refused
-- it, nothing ran, and it is final (also as a late outcome). Same version
-- number as the SQLite backend's. The constraints only become looser, so
-- every stored row satisfies them (a new constraint is checked against
-- the rows, the default WITH CHECK).
ALTER TABLE {{schema}}.attempts DROP CONSTRAINT CK_attempts_state;
GO
ALTER TABLE {{schema}}.attempts ADD CONSTRAINT CK_attempts_state
    CHECK (state IN (N'dispatched', N'running', N'succeeded', N'failed',
                     N'timed_out', N'cancelled', N'lost', N'rejected'));
GO
ALTER TABLE {{schema}}.attempts DROP CONSTRAINT CK_attempts_late_state;
GO
ALTER TABLE {{schema}}.attempts ADD CONSTRAINT CK_attempts_late_state
    CHECK (late_state IN (N'', N'succeeded', N'failed', N'timed_out', N'cancelled', N'rejected'));
GO
