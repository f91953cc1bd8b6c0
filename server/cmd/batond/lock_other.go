//go:build !unix

package main

// lockFile is a no-op where flock(2) does not exist; the leader lease still
// keeps two processes from scheduling at once.
func lockFile(string) (func(), error) { return func() {}, nil }
