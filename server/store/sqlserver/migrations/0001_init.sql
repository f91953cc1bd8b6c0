-- Version 1: the whole initial schema.
--
-- {{schema}} is replaced by the validated, bracket-quoted schema name and
-- {{schema_name}} by the bare name (inside string literals). Batches are
-- separated by GO lines; the runner applies them all in one transaction
-- that holds the migration app lock, and creates the schema and the
-- schema_migrations table before it.
--
-- Conventions: every constraint is named; times are DATETIME2(3) UTC and
-- leases are compared only against SYSUTCDATETIME(); NULL stands for the
-- zero time. Strings that are looked up or ordered by (names, tasks,
-- agents, request ids, lease holders) are NVARCHAR with a binary collation,
-- so they compare exactly as Go strings do (SQLite's BINARY collation),
-- whatever the database's default collation is. JSON is NVARCHAR(MAX)
-- checked with ISJSON. Predicates that filtered indexes must match use
-- state literals, never parameters.

-- OPENJSON (attempt id lists) needs compatibility level 130 (SQL Server 2016).
IF (SELECT compatibility_level FROM sys.databases WHERE name = DB_NAME()) < 130
    THROW 50001, N'baton needs database compatibility level 130 (SQL Server 2016) or higher', 1;
GO

CREATE TABLE {{schema}}.jobs (
    id              BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_jobs PRIMARY KEY CLUSTERED,
    name            NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    current_version INT NOT NULL,
    created_at      DATETIME2(3) NOT NULL CONSTRAINT DF_jobs_created_at DEFAULT SYSUTCDATETIME(),
    deleted_at      DATETIME2(3) NULL,
    CONSTRAINT UQ_jobs_name UNIQUE (name),
    CONSTRAINT CK_jobs_name CHECK (name <> N''),
    CONSTRAINT CK_jobs_current_version CHECK (current_version > 0)
);
GO

-- Job versions are immutable once written.
CREATE TABLE {{schema}}.job_versions (
    job_id      BIGINT NOT NULL,
    version     INT NOT NULL,
    description NVARCHAR(MAX) NOT NULL,
    spec        NVARCHAR(MAX) NOT NULL,
    source      NVARCHAR(MAX) NOT NULL,
    created_at  DATETIME2(3) NOT NULL CONSTRAINT DF_job_versions_created_at DEFAULT SYSUTCDATETIME(),
    CONSTRAINT PK_job_versions PRIMARY KEY CLUSTERED (job_id, version),
    CONSTRAINT FK_job_versions_job FOREIGN KEY (job_id) REFERENCES {{schema}}.jobs (id),
    CONSTRAINT CK_job_versions_version CHECK (version > 0),
    CONSTRAINT CK_job_versions_spec CHECK (ISJSON(spec) = 1)
);
GO

CREATE TABLE {{schema}}.runs (
    id            BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_runs PRIMARY KEY CLUSTERED,
    job_id        BIGINT NOT NULL,
    job_name      NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    job_version   INT NOT NULL,
    state         NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    overlap       NVARCHAR(8) COLLATE Latin1_General_100_BIN2 NOT NULL,
    params        NVARCHAR(MAX) NOT NULL,
    restart_count INT NOT NULL CONSTRAINT DF_runs_restart_count DEFAULT 0,
    request_id    NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT DF_runs_request_id DEFAULT N'',
    error         NVARCHAR(MAX) NOT NULL CONSTRAINT DF_runs_error DEFAULT N'',
    created_at    DATETIME2(3) NOT NULL CONSTRAINT DF_runs_created_at DEFAULT SYSUTCDATETIME(),
    started_at    DATETIME2(3) NULL,
    finished_at   DATETIME2(3) NULL,
    CONSTRAINT FK_runs_job_version FOREIGN KEY (job_id, job_version) REFERENCES {{schema}}.job_versions (job_id, version),
    CONSTRAINT CK_runs_state CHECK (state IN (N'queued', N'running', N'cancelling', N'succeeded', N'failed', N'cancelled')),
    CONSTRAINT CK_runs_overlap CHECK (overlap IN (N'forbid', N'queue', N'allow')),
    CONSTRAINT CK_runs_params CHECK (ISJSON(params) = 1),
    CONSTRAINT CK_runs_restart_count CHECK (restart_count >= 0)
);
GO

-- overlap forbid|queue: at most one active exclusive run per job. The
-- guarded INSERT/UPDATE statements check first; this index is the backstop.
CREATE UNIQUE NONCLUSTERED INDEX UX_runs_one_active ON {{schema}}.runs (job_id)
    WHERE overlap IN (N'forbid', N'queue') AND state IN (N'running', N'cancelling');
GO
-- RequestID is an idempotency key per job.
CREATE UNIQUE NONCLUSTERED INDEX UX_runs_request ON {{schema}}.runs (job_id, request_id)
    WHERE request_id <> N'';
GO
-- Overlap guards and JobDelete look up a job's runs by state.
CREATE NONCLUSTERED INDEX IX_runs_job_state ON {{schema}}.runs (job_id, state);
GO
-- RunList by job, newest first.
CREATE NONCLUSTERED INDEX IX_runs_job_name ON {{schema}}.runs (job_name, id);
GO
-- RunList by state, newest first.
CREATE NONCLUSTERED INDEX IX_runs_state ON {{schema}}.runs (state, id);
GO

CREATE TABLE {{schema}}.task_instances (
    id          BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_task_instances PRIMARY KEY CLUSTERED,
    run_id      BIGINT NOT NULL,
    task        NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    item        INT NOT NULL,
    item_value  NVARCHAR(MAX) NOT NULL CONSTRAINT DF_task_instances_item_value DEFAULT N'',
    state       NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    attempts    INT NOT NULL CONSTRAINT DF_task_instances_attempts DEFAULT 0,
    -- attempt_id is the latest attempt, the instance's fencing token.
    attempt_id  BIGINT NULL,
    outputs     NVARCHAR(MAX) NOT NULL CONSTRAINT DF_task_instances_outputs DEFAULT N'{}',
    error       NVARCHAR(MAX) NOT NULL CONSTRAINT DF_task_instances_error DEFAULT N'',
    ready_at    DATETIME2(3) NULL,
    started_at  DATETIME2(3) NULL,
    finished_at DATETIME2(3) NULL,
    CONSTRAINT FK_task_instances_run FOREIGN KEY (run_id) REFERENCES {{schema}}.runs (id),
    CONSTRAINT UQ_task_instances_run_task_item UNIQUE (run_id, task, item),
    CONSTRAINT CK_task_instances_task CHECK (task <> N''),
    CONSTRAINT CK_task_instances_item CHECK (item >= -1),
    CONSTRAINT CK_task_instances_state CHECK (state IN (N'pending', N'ready', N'dispatched', N'running', N'succeeded',
                                                        N'failed', N'skipped', N'blocked', N'cancelled', N'lost')),
    CONSTRAINT CK_task_instances_attempts CHECK (attempts >= 0),
    CONSTRAINT CK_task_instances_outputs CHECK (ISJSON(outputs) = 1)
);
GO

CREATE TABLE {{schema}}.attempts (
    id               BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_attempts PRIMARY KEY CLUSTERED,
    instance_id      BIGINT NOT NULL,
    run_id           BIGINT NOT NULL,
    task             NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    item             INT NOT NULL,
    attempt_no       INT NOT NULL,
    kind             NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    agent            NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    state            NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    lease_expires_at DATETIME2(3) NOT NULL,
    exit_code        INT NULL,
    error            NVARCHAR(MAX) NOT NULL CONSTRAINT DF_attempts_error DEFAULT N'',
    outputs          NVARCHAR(MAX) NOT NULL CONSTRAINT DF_attempts_outputs DEFAULT N'{}',
    stdout_tail      NVARCHAR(MAX) NOT NULL CONSTRAINT DF_attempts_stdout_tail DEFAULT N'',
    stderr_tail      NVARCHAR(MAX) NOT NULL CONSTRAINT DF_attempts_stderr_tail DEFAULT N'',
    late_state       NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT DF_attempts_late_state DEFAULT N'',
    dispatched_at    DATETIME2(3) NOT NULL CONSTRAINT DF_attempts_dispatched_at DEFAULT SYSUTCDATETIME(),
    started_at       DATETIME2(3) NULL,
    finished_at      DATETIME2(3) NULL,
    CONSTRAINT FK_attempts_instance FOREIGN KEY (instance_id) REFERENCES {{schema}}.task_instances (id),
    CONSTRAINT FK_attempts_run FOREIGN KEY (run_id) REFERENCES {{schema}}.runs (id),
    CONSTRAINT UQ_attempts_instance_no UNIQUE (instance_id, attempt_no),
    CONSTRAINT CK_attempts_attempt_no CHECK (attempt_no > 0),
    CONSTRAINT CK_attempts_kind CHECK (kind IN (N'first', N'retry', N'restart', N'replacement')),
    CONSTRAINT CK_attempts_agent CHECK (agent <> N''),
    CONSTRAINT CK_attempts_state CHECK (state IN (N'dispatched', N'running', N'succeeded', N'failed',
                                                  N'timed_out', N'cancelled', N'lost')),
    CONSTRAINT CK_attempts_outputs CHECK (ISJSON(outputs) = 1),
    CONSTRAINT CK_attempts_late_state CHECK (late_state IN (N'', N'succeeded', N'failed', N'timed_out', N'cancelled'))
);
GO

-- The instance's latest attempt. Added after attempts exists; the two
-- tables reference each other.
ALTER TABLE {{schema}}.task_instances
    ADD CONSTRAINT FK_task_instances_attempt FOREIGN KEY (attempt_id) REFERENCES {{schema}}.attempts (id);
GO
-- The reaper's scan and lease extension: live attempts by lease expiry.
CREATE NONCLUSTERED INDEX IX_attempts_live_lease ON {{schema}}.attempts (lease_expires_at)
    WHERE state IN (N'dispatched', N'running');
GO
-- AttemptList by run.
CREATE NONCLUSTERED INDEX IX_attempts_run ON {{schema}}.attempts (run_id, id);
GO

-- The event cursor is rv, a ROWVERSION read as BIGINT. Neither IDENTITY
-- nor rowversion order is commit order on SQL Server; EventAppend holds a
-- lock on the run's row while it appends, so within one run (the only
-- order readers see) rowversion order is commit order, and a reader
-- tailing run_id = @run AND rv > @after never skips an event.
CREATE TABLE {{schema}}.events (
    id             BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_events PRIMARY KEY CLUSTERED,
    rv             ROWVERSION NOT NULL,
    run_id         BIGINT NOT NULL,
    at             DATETIME2(3) NOT NULL,
    task           NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT DF_events_task DEFAULT N'',
    item           INT NOT NULL CONSTRAINT DF_events_item DEFAULT -1,
    attempt_id     BIGINT NOT NULL CONSTRAINT DF_events_attempt_id DEFAULT 0,
    run_state      NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT DF_events_run_state DEFAULT N'',
    instance_state NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT DF_events_instance_state DEFAULT N'',
    agent          NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT DF_events_agent DEFAULT N'',
    exit_code      INT NULL,
    message        NVARCHAR(MAX) NOT NULL CONSTRAINT DF_events_message DEFAULT N'',
    CONSTRAINT FK_events_run FOREIGN KEY (run_id) REFERENCES {{schema}}.runs (id),
    CONSTRAINT CK_events_run_state CHECK (run_state IN (N'', N'queued', N'running', N'cancelling',
                                                        N'succeeded', N'failed', N'cancelled')),
    CONSTRAINT CK_events_instance_state CHECK (instance_state IN (N'', N'pending', N'ready', N'dispatched',
                                                                  N'running', N'succeeded', N'failed', N'skipped',
                                                                  N'blocked', N'cancelled', N'lost')),
    CONSTRAINT CK_events_one_state CHECK (run_state = N'' OR instance_state = N'')
);
GO
CREATE UNIQUE NONCLUSTERED INDEX UX_events_run_rv ON {{schema}}.events (run_id, rv);
GO

CREATE TABLE {{schema}}.log_chunks (
    id          BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_log_chunks PRIMARY KEY CLUSTERED,
    attempt_id  BIGINT NOT NULL,
    stream      TINYINT NOT NULL,
    byte_offset BIGINT NOT NULL,
    data        VARBINARY(MAX) NOT NULL,
    at          DATETIME2(3) NOT NULL,
    CONSTRAINT FK_log_chunks_attempt FOREIGN KEY (attempt_id) REFERENCES {{schema}}.attempts (id),
    -- A chunk re-sent after a reconnect is stored once.
    CONSTRAINT UQ_log_chunks_attempt_stream_offset UNIQUE (attempt_id, stream, byte_offset),
    CONSTRAINT CK_log_chunks_stream CHECK (stream IN (1, 2)),
    CONSTRAINT CK_log_chunks_byte_offset CHECK (byte_offset >= 0)
);
GO
-- LogList by attempt, in arrival order.
CREATE NONCLUSTERED INDEX IX_log_chunks_attempt ON {{schema}}.log_chunks (attempt_id, id);
GO

CREATE TABLE {{schema}}.agents (
    name         NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT PK_agents PRIMARY KEY CLUSTERED,
    labels       NVARCHAR(MAX) NOT NULL CONSTRAINT DF_agents_labels DEFAULT N'{}',
    slots        INT NOT NULL,
    version      NVARCHAR(400) NOT NULL CONSTRAINT DF_agents_version DEFAULT N'',
    hostname     NVARCHAR(400) NOT NULL CONSTRAINT DF_agents_hostname DEFAULT N'',
    os           NVARCHAR(400) NOT NULL CONSTRAINT DF_agents_os DEFAULT N'',
    state        NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    connected_at DATETIME2(3) NULL,
    last_seen_at DATETIME2(3) NULL,
    CONSTRAINT CK_agents_name CHECK (name <> N''),
    CONSTRAINT CK_agents_labels CHECK (ISJSON(labels) = 1),
    CONSTRAINT CK_agents_slots CHECK (slots >= 0),
    CONSTRAINT CK_agents_state CHECK (state IN (N'connected', N'disconnected', N'lost'))
);
GO

-- One row per named lease, created by the first LeaderAcquire. holder is
-- N'' while the lease is free; token grows by one on every change of holder.
CREATE TABLE {{schema}}.leader_lease (
    name       NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT PK_leader_lease PRIMARY KEY CLUSTERED,
    holder     NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    token      BIGINT NOT NULL,
    expires_at DATETIME2(3) NOT NULL,
    CONSTRAINT CK_leader_lease_name CHECK (name <> N''),
    CONSTRAINT CK_leader_lease_token CHECK (token > 0)
);
GO
