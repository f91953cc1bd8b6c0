// Package sqlserver is the SQL Server backend of [store.Store], for a
// control plane shared by several batond replicas (one leader, standbys)
// and for state that must survive the machine batond runs on.
//
// # Connections
//
// [Open] builds a go-mssqldb connector from Config.DSN; every pooled
// session runs SET XACT_ABORT ON, so any error, and a client cancel, rolls
// the whole transaction back on the server. The pool keeps as many idle
// connections as open ones (32 by default), recycles each after 30 minutes
// so an availability group failover is followed through the listener, and
// closes connections idle for 5 minutes.
//
// # Transactions and concurrency
//
// Writes run in READ COMMITTED transactions, correct with
// READ_COMMITTED_SNAPSHOT off or on: every check that gates a write either
// sits in the write's own WHERE clause or reads with a locking hint
// (UPDLOCK, HOLDLOCK, REPEATABLEREAD). Transitions are guarded UPDATEs
// checked by the rows they affect; inserts that must not collide (a second
// active run of a forbid job, a repeated request id, a job name, a log
// chunk) are guarded INSERT ... WHERE NOT EXISTS under range locks, so the
// unique indexes that back them are never hit in normal operation. This
// matters because with XACT_ABORT ON any error, a unique violation too,
// ends the transaction. A transaction whose statement failed is unusable:
// later calls on its Store return that error and it is never committed.
// Deadlocks (1205), lock timeouts (1222), snapshot conflicts (3960) and
// Azure SQL transient errors run the whole transaction function again, up
// to [store.MaxTxTries] times.
//
// Claims follow the queue pattern of Hangfire and NServiceBus:
// AttemptClaim reads its instance WITH (UPDLOCK, ROWLOCK), so of
// concurrent claimers one wins and the others see the new state.
//
// # Time, leases and leadership
//
// Times are DATETIME2(3) UTC. Leases (attempts' and the leader's) are set
// and compared only with SYSUTCDATETIME(), the server's clock, never a
// replica's. The leader lease is a row with a fencing token, not
// sp_getapplock, whose lock an availability group failover silently
// drops; LeaderCheck reads it WITH (REPEATABLEREAD), so inside a
// transaction it holds a shared lock that keeps a takeover from committing
// first.
//
// # Events
//
// An event's cursor is its ROWVERSION read as BIGINT. Rowversions (like
// IDENTITY values) are taken when a row is written, not when it commits,
// so a reader tailing "cursor > last" could skip an event whose
// transaction commits after a later one's. EventAppend therefore locks the
// row of each run it appends to (UPDLOCK, held to commit): the events of
// one run are written by one transaction at a time, in commit order, and
// a reader that resumes after the last cursor it saw never skips one. The
// lock is per run, so appends to different runs do not wait for each
// other, and a reader is never held back by other runs' transactions (as
// a MIN_ACTIVE_ROWVERSION() bound, which is per database, would do).
//
// # Schema and migrations
//
// All objects live in one schema (Config.Schema, default "baton"), named
// in statements through a validated template. Migrations are embedded SQL
// files, one per version with the SQLite backend's numbering, split into
// batches on GO lines. Each version is applied in one transaction that
// holds the exclusive app lock "baton:migrations:<schema>"
// (sp_getapplock, owned by the transaction) and re-reads the version
// table under it, so concurrent migrators apply each version once. The
// migrations need database compatibility level 130 (SQL Server 2016) or
// higher. Every statement the backend sends is declared through one
// registry, which a test parses with a T-SQL grammar.
//
// # Permissions
//
// Migrate needs a principal that may create the schema (once) and tables
// in it. The store at run time needs only SELECT, INSERT and UPDATE on the
// schema: it deletes nothing, calls no procedure and, once the schema is
// current, Migrate on a DML-only login changes nothing.
// deploy/sqlserver/README.md has the script.
package sqlserver
