// Package store is the contract between batond and its state store.
//
// It declares the domain types (jobs, runs, task instances, attempts,
// events, log chunks, agents, the leader lease), one method per operation
// with a params struct, and the sentinel errors callers may branch on. Each
// backend (store/sqlite, store/sqlserver) implements [Store] and runs the
// conformance suite in store/storetest.
//
// Invariants live in the database, not in memory: every state transition is
// a guarded UPDATE (WHERE state IN the legal predecessors) checked through
// its rows affected; overlap: forbid is a unique index over a job's active
// runs; attempt ids are fencing tokens.
//
// Time is the store's clock: SQL Server compares leases against
// SYSUTCDATETIME(), SQLite against the clock of the process that embeds it.
// All times returned are UTC.
package store
