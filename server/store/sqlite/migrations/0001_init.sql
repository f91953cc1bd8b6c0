-- Version 1: the whole initial schema. Times are INTEGER unix milliseconds
-- UTC; NULL stands for the zero time. Ids that leave the database (run ids,
-- attempt ids, event cursors) are AUTOINCREMENT so they are never reused,
-- even after rows are purged.
--
-- State checks are written as OR chains, not IN lists: SQLite builds an
-- IN list of more than two constants into a temporary index on every
-- statement that writes the row, which roughly doubled the cost of an
-- event insert.

CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL UNIQUE CHECK (name <> ''),
    current_version INTEGER NOT NULL CHECK (current_version > 0),
    created_at      INTEGER NOT NULL,
    deleted_at      INTEGER
);

-- Job versions are immutable once written.
CREATE TABLE job_versions (
    job_id      INTEGER NOT NULL REFERENCES jobs (id),
    version     INTEGER NOT NULL CHECK (version > 0),
    description TEXT    NOT NULL,
    spec        TEXT    NOT NULL CHECK (json_valid(spec)),
    source      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (job_id, version)
) WITHOUT ROWID;

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        INTEGER NOT NULL,
    job_name      TEXT    NOT NULL,
    job_version   INTEGER NOT NULL,
    state         TEXT    NOT NULL CHECK (state = 'queued' OR state = 'running' OR
                                          state = 'cancelling' OR state = 'succeeded' OR
                                          state = 'failed' OR state = 'cancelled'),
    overlap       TEXT    NOT NULL CHECK (overlap = 'forbid' OR overlap = 'queue' OR
                                          overlap = 'allow'),
    params        TEXT    NOT NULL CHECK (json_valid(params)),
    restart_count INTEGER NOT NULL DEFAULT 0 CHECK (restart_count >= 0),
    request_id    TEXT    NOT NULL DEFAULT '',
    error         TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    FOREIGN KEY (job_id, job_version) REFERENCES job_versions (job_id, version)
);
-- overlap forbid|queue: at most one active exclusive run per job.
CREATE UNIQUE INDEX runs_one_active ON runs (job_id)
    WHERE overlap IN ('forbid', 'queue') AND state IN ('running', 'cancelling');
-- RequestID is an idempotency key per job.
CREATE UNIQUE INDEX runs_request ON runs (job_id, request_id) WHERE request_id <> '';
-- Overlap guards and JobDelete look up a job's runs by state.
CREATE INDEX runs_job_state ON runs (job_id, state);
-- RunList by job, newest first.
CREATE INDEX runs_job_name ON runs (job_name, id);
-- RunList by state, newest first.
CREATE INDEX runs_state ON runs (state, id);

CREATE TABLE task_instances (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    task        TEXT    NOT NULL CHECK (task <> ''),
    item        INTEGER NOT NULL CHECK (item >= -1),
    item_value  TEXT    NOT NULL DEFAULT '',
    state       TEXT    NOT NULL CHECK (state = 'pending' OR state = 'ready' OR
                                        state = 'dispatched' OR state = 'running' OR
                                        state = 'succeeded' OR state = 'failed' OR
                                        state = 'skipped' OR state = 'blocked' OR
                                        state = 'cancelled' OR state = 'lost'),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- attempt_id is the latest attempt, the instance's fencing token.
    attempt_id  INTEGER REFERENCES attempts (id),
    outputs     TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(outputs)),
    error       TEXT    NOT NULL DEFAULT '',
    ready_at    INTEGER,
    started_at  INTEGER,
    finished_at INTEGER,
    UNIQUE (run_id, task, item)
);

CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id      INTEGER NOT NULL REFERENCES task_instances (id),
    run_id           INTEGER NOT NULL REFERENCES runs (id),
    task             TEXT    NOT NULL,
    item             INTEGER NOT NULL,
    no               INTEGER NOT NULL CHECK (no > 0),
    kind             TEXT    NOT NULL CHECK (kind = 'first' OR kind = 'retry' OR
                                             kind = 'restart' OR kind = 'replacement'),
    agent            TEXT    NOT NULL CHECK (agent <> ''),
    state            TEXT    NOT NULL CHECK (state = 'dispatched' OR state = 'running' OR
                                             state = 'succeeded' OR state = 'failed' OR
                                             state = 'timed_out' OR state = 'cancelled' OR
                                             state = 'lost'),
    lease_expires_at INTEGER NOT NULL,
    exit_code        INTEGER,
    error            TEXT    NOT NULL DEFAULT '',
    outputs          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(outputs)),
    stdout_tail      TEXT    NOT NULL DEFAULT '',
    stderr_tail      TEXT    NOT NULL DEFAULT '',
    late_state       TEXT    NOT NULL DEFAULT '' CHECK (late_state = '' OR
                                                        late_state = 'succeeded' OR
                                                        late_state = 'failed' OR
                                                        late_state = 'timed_out' OR
                                                        late_state = 'cancelled'),
    dispatched_at    INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (instance_id, no)
);
-- The reaper's scan: live attempts by lease expiry.
CREATE INDEX attempts_live_lease ON attempts (lease_expires_at)
    WHERE state IN ('dispatched', 'running');
-- AttemptList by run.
CREATE INDEX attempts_run ON attempts (run_id, id);

-- The id is the event cursor. SQLite serializes writers, so id order is
-- commit order and a reader tailing id > last never skips an event.
CREATE TABLE events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id         INTEGER NOT NULL REFERENCES runs (id),
    at             INTEGER NOT NULL,
    task           TEXT    NOT NULL DEFAULT '',
    item           INTEGER NOT NULL DEFAULT -1,
    attempt_id     INTEGER NOT NULL DEFAULT 0,
    run_state      TEXT    NOT NULL DEFAULT '' CHECK (run_state = '' OR run_state = 'queued' OR
                                                      run_state = 'running' OR
                                                      run_state = 'cancelling' OR
                                                      run_state = 'succeeded' OR
                                                      run_state = 'failed' OR
                                                      run_state = 'cancelled'),
    instance_state TEXT    NOT NULL DEFAULT '' CHECK (instance_state = '' OR
                                                      instance_state = 'pending' OR
                                                      instance_state = 'ready' OR
                                                      instance_state = 'dispatched' OR
                                                      instance_state = 'running' OR
                                                      instance_state = 'succeeded' OR
                                                      instance_state = 'failed' OR
                                                      instance_state = 'skipped' OR
                                                      instance_state = 'blocked' OR
                                                      instance_state = 'cancelled' OR
                                                      instance_state = 'lost'),
    agent          TEXT    NOT NULL DEFAULT '',
    exit_code      INTEGER,
    message        TEXT    NOT NULL DEFAULT '',
    CHECK (run_state = '' OR instance_state = '')
);
CREATE INDEX events_run ON events (run_id, id);

CREATE TABLE log_chunks (
    id          INTEGER PRIMARY KEY,
    attempt_id  INTEGER NOT NULL REFERENCES attempts (id),
    stream      INTEGER NOT NULL CHECK (stream IN (1, 2)),
    byte_offset INTEGER NOT NULL CHECK (byte_offset >= 0),
    data        BLOB    NOT NULL,
    at          INTEGER NOT NULL,
    -- A chunk re-sent after a reconnect is stored once.
    UNIQUE (attempt_id, stream, byte_offset)
);

CREATE TABLE agents (
    name         TEXT    PRIMARY KEY CHECK (name <> ''),
    labels       TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
    slots        INTEGER NOT NULL CHECK (slots >= 0),
    version      TEXT    NOT NULL DEFAULT '',
    hostname     TEXT    NOT NULL DEFAULT '',
    os           TEXT    NOT NULL DEFAULT '',
    state        TEXT    NOT NULL CHECK (state = 'connected' OR state = 'disconnected' OR
                                         state = 'lost'),
    connected_at INTEGER,
    last_seen_at INTEGER
) WITHOUT ROWID;

-- One row per named lease, created by the first LeaderAcquire. holder is ''
-- while the lease is free; token grows by one on every change of holder.
CREATE TABLE leader_lease (
    name       TEXT    PRIMARY KEY CHECK (name <> ''),
    holder     TEXT    NOT NULL,
    token      INTEGER NOT NULL CHECK (token > 0),
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
