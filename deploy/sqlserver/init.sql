-- Prepares SQL Server for Baton. Run once as sysadmin with sqlcmd (the
-- db-init service of compose.yaml does); every step is idempotent.
--
-- sqlcmd variables:
--   BATON_OWNER_PASSWORD  password of baton_owner, the login that runs
--                         `batond migrate` and owns schema baton
--   BATON_SVC_PASSWORD    password of baton_svc, the login batond runs as
--   BATON_RCSI            ON or OFF: READ_COMMITTED_SNAPSHOT of database baton
--
-- Passwords must meet the server's password policy and must not contain a
-- single quote.

-- Databases: baton for the control plane; baton_test and baton_test_rcsi
-- for the store conformance suite, with READ_COMMITTED_SNAPSHOT off and on
-- (the backend must be correct under both).
IF DB_ID(N'baton') IS NULL CREATE DATABASE baton;
IF DB_ID(N'baton_test') IS NULL CREATE DATABASE baton_test;
IF DB_ID(N'baton_test_rcsi') IS NULL CREATE DATABASE baton_test_rcsi;
GO

-- ALTER DATABASE cannot run inside a transaction, so no migration does it:
-- it is a DBA step. ROLLBACK IMMEDIATE ends other sessions' transactions,
-- so each database is altered only when its setting differs (on the first
-- run, before batond starts, or when BATON_RCSI changed).
IF (SELECT is_read_committed_snapshot_on FROM sys.databases WHERE name = N'baton')
    <> CASE N'$(BATON_RCSI)' WHEN N'ON' THEN 1 ELSE 0 END
    ALTER DATABASE baton SET READ_COMMITTED_SNAPSHOT $(BATON_RCSI) WITH ROLLBACK IMMEDIATE;
IF (SELECT is_read_committed_snapshot_on FROM sys.databases WHERE name = N'baton_test') <> 0
    ALTER DATABASE baton_test SET READ_COMMITTED_SNAPSHOT OFF WITH ROLLBACK IMMEDIATE;
IF (SELECT is_read_committed_snapshot_on FROM sys.databases WHERE name = N'baton_test_rcsi') <> 1
    ALTER DATABASE baton_test_rcsi SET READ_COMMITTED_SNAPSHOT ON WITH ROLLBACK IMMEDIATE;
GO

IF SUSER_ID(N'baton_owner') IS NULL
    CREATE LOGIN baton_owner WITH PASSWORD = N'$(BATON_OWNER_PASSWORD)', DEFAULT_DATABASE = baton;
IF SUSER_ID(N'baton_svc') IS NULL
    CREATE LOGIN baton_svc WITH PASSWORD = N'$(BATON_SVC_PASSWORD)', DEFAULT_DATABASE = baton;
GO

USE baton;
GO

-- The migration principal owns schema baton: it may create, alter and drop
-- objects in it, and nothing outside it. CREATE TABLE is the database
-- permission creating a table needs in addition to owning its schema.
IF DATABASE_PRINCIPAL_ID(N'baton_owner') IS NULL CREATE USER baton_owner FOR LOGIN baton_owner;
GO
IF SCHEMA_ID(N'baton') IS NULL EXEC (N'CREATE SCHEMA baton AUTHORIZATION baton_owner');
GO
GRANT CREATE TABLE TO baton_owner;
GO

-- The runtime login gets DML on the schema through a role, and nothing
-- else: the store never deletes, never calls a procedure, and never
-- changes the schema. (sp_getapplock, used only by migrations, needs only
-- public.)
IF DATABASE_PRINCIPAL_ID(N'baton_app') IS NULL CREATE ROLE baton_app;
GO
GRANT SELECT, INSERT, UPDATE ON SCHEMA::baton TO baton_app;
GO
IF DATABASE_PRINCIPAL_ID(N'baton_svc') IS NULL CREATE USER baton_svc FOR LOGIN baton_svc;
GO
ALTER ROLE baton_app ADD MEMBER baton_svc;
GO
