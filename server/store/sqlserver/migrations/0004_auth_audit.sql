-- Version 4: API tokens and the audit trail. Same version number as the
-- SQLite backend's.

-- api_tokens holds who may call the API. Only the SHA-256 of each token is
-- kept (64 lower-case hex digits): tokens are 160 random bits, so a fast
-- hash is enough (there is no dictionary to guess from, unlike a
-- password), and batond looks tokens up by it. Revoked tokens stay, so
-- their names are not reused and the audit trail keeps its meaning.
CREATE TABLE {{schema}}.api_tokens (
    id           BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_api_tokens PRIMARY KEY CLUSTERED,
    name         NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    role         NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
    jobs         NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT DF_api_tokens_jobs DEFAULT N'',
    hash         NVARCHAR(64) COLLATE Latin1_General_100_BIN2 NOT NULL,
    created_at   DATETIME2(3) NOT NULL CONSTRAINT DF_api_tokens_created_at DEFAULT SYSUTCDATETIME(),
    created_by   NVARCHAR(400) NOT NULL CONSTRAINT DF_api_tokens_created_by DEFAULT N'',
    expires_at   DATETIME2(3) NULL,
    revoked_at   DATETIME2(3) NULL,
    last_used_at DATETIME2(3) NULL,
    CONSTRAINT UQ_api_tokens_name UNIQUE (name),
    CONSTRAINT UQ_api_tokens_hash UNIQUE (hash),
    CONSTRAINT CK_api_tokens_name CHECK (name <> N''),
    CONSTRAINT CK_api_tokens_role CHECK (role IN (N'viewer', N'operator', N'admin')),
    CONSTRAINT CK_api_tokens_hash CHECK (LEN(hash) = 64)
);
GO

-- audit_log is append-only. batond inserts rows and, for retention, calls
-- audit_purge below; nothing updates a row (the trigger refuses it). To
-- make that hold against batond's own login too, deny it UPDATE and
-- DELETE on the table and grant it EXECUTE on the procedure, which deletes
-- through ownership chaining (docs/operations.md):
--
--   DENY UPDATE, DELETE ON baton.audit_log TO baton_app;
--   GRANT EXECUTE ON baton.audit_purge TO baton_app;
CREATE TABLE {{schema}}.audit_log (
    id      BIGINT IDENTITY(1, 1) NOT NULL CONSTRAINT PK_audit_log PRIMARY KEY CLUSTERED,
    at      DATETIME2(3) NOT NULL,
    who     NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL,
    peer    NVARCHAR(400) NOT NULL CONSTRAINT DF_audit_log_peer DEFAULT N'',
    method  NVARCHAR(400) NOT NULL,
    job     NVARCHAR(400) COLLATE Latin1_General_100_BIN2 NOT NULL CONSTRAINT DF_audit_log_job DEFAULT N'',
    run_id  BIGINT NOT NULL CONSTRAINT DF_audit_log_run_id DEFAULT 0,
    code    NVARCHAR(400) NOT NULL,
    message NVARCHAR(2000) NOT NULL CONSTRAINT DF_audit_log_message DEFAULT N''
);
-- AuditList --since and AuditPurge.
CREATE INDEX IX_audit_log_at ON {{schema}}.audit_log (at);
-- AuditList --who and --job, newest first.
CREATE INDEX IX_audit_log_who ON {{schema}}.audit_log (who, id);
CREATE INDEX IX_audit_log_job ON {{schema}}.audit_log (job, id);
GO

CREATE TRIGGER {{schema}}.TR_audit_log_no_update ON {{schema}}.audit_log
INSTEAD OF UPDATE
AS
BEGIN
    THROW 50002, N'audit_log is append-only', 1;
END;
GO

-- audit_purge removes up to @limit of the oldest records older than
-- @before, and refuses to touch the last 24 hours whoever calls it (by the
-- server's clock). It returns how many rows it removed.
CREATE PROCEDURE {{schema}}.audit_purge
    @before DATETIME2(3),
    @limit  INT
AS
BEGIN
    SET NOCOUNT ON;
    IF @before > DATEADD(hour, -24, SYSUTCDATETIME())
        THROW 50003, N'audit purge: the records of the last 24 hours are kept', 1;
    WITH oldest AS (
        SELECT TOP (@limit) id FROM {{schema}}.audit_log WHERE at < @before ORDER BY at, id)
    DELETE FROM oldest;
    SELECT @@ROWCOUNT;
END;
GO
