-- Version 4: API tokens and the audit trail.

-- api_tokens holds who may call the API. Only the SHA-256 of each token is
-- kept (hex, 64 characters): tokens are 160 random bits, so a fast hash
-- is enough (no password hashing needed: there is nothing to guess from a
-- dictionary), and it lets batond look a token up by its hash. Revoked
-- tokens stay, so their names are not reused and the audit trail keeps
-- meaning.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL UNIQUE CHECK (name <> ''),
    role         TEXT    NOT NULL CHECK (role = 'viewer' OR role = 'operator' OR role = 'admin'),
    jobs         TEXT    NOT NULL DEFAULT '',
    hash         TEXT    NOT NULL UNIQUE CHECK (length(hash) = 64),
    created_at   INTEGER NOT NULL,
    created_by   TEXT    NOT NULL DEFAULT '',
    expires_at   INTEGER,
    revoked_at   INTEGER,
    last_used_at INTEGER
);

-- audit_log is append-only: batond only inserts rows and, for retention,
-- deletes the oldest. The triggers refuse any UPDATE.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    who     TEXT    NOT NULL,
    peer    TEXT    NOT NULL DEFAULT '',
    method  TEXT    NOT NULL,
    job     TEXT    NOT NULL DEFAULT '',
    run_id  INTEGER NOT NULL DEFAULT 0,
    code    TEXT    NOT NULL,
    message TEXT    NOT NULL DEFAULT ''
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
-- AuditList --since and AuditPurge.
CREATE INDEX audit_log_at ON audit_log (at);
-- AuditList --who and --job, newest first.
CREATE INDEX audit_log_who ON audit_log (who, id);
CREATE INDEX audit_log_job ON audit_log (job, id);
