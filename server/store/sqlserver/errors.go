package sqlserver

import (
	"errors"
	"fmt"
	"slices"

	mssql "github.com/microsoft/go-mssqldb"
)

// SQL Server error numbers the backend classifies.
const (
	errDeadlockVictim   = 1205  // chosen as deadlock victim; the transaction is already rolled back
	errLockTimeout      = 1222  // lock request time out period exceeded
	errSnapshotConflict = 3960  // snapshot isolation update conflict
	errUniqueConstraint = 2627  // violation of a PRIMARY KEY or UNIQUE constraint
	errUniqueIndex      = 2601  // duplicate key row in a unique index
	errAzureDBNotAvail  = 40613 // Azure SQL: database not currently available
	errAzureBusy        = 40501 // Azure SQL: the service is currently busy
	errAzureReconfig    = 40197 // Azure SQL: error processing the request (reconfiguration)
	errAzureElastic1    = 49918 // Azure SQL: not enough resources to process the request
	errAzureElastic2    = 49919 // Azure SQL: too many create or update operations in progress
	errAzureElastic3    = 49920 // Azure SQL: too many operations in progress
)

// retryableNumbers are the errors after which the whole transaction may be
// run again: the server has rolled it back, or never ran it.
var retryableNumbers = []int32{
	errDeadlockVictim, errLockTimeout, errSnapshotConflict,
	errAzureDBNotAvail, errAzureBusy, errAzureReconfig,
	errAzureElastic1, errAzureElastic2, errAzureElastic3,
}

// errorNumbers returns the numbers of every server error in err's chain.
// mssql.Error.Number is only the batch's last error, so All is scanned.
func errorNumbers(err error) []int32 {
	var me mssql.Error
	if !errors.As(err, &me) {
		return nil
	}
	if len(me.All) == 0 {
		return []int32{me.Number}
	}
	n := make([]int32, len(me.All))
	for i, e := range me.All {
		n[i] = e.Number
	}
	return n
}

func hasNumber(err error, want ...int32) bool {
	return slices.ContainsFunc(errorNumbers(err), func(n int32) bool { return slices.Contains(want, n) })
}

// isUnique reports whether err is a unique key or unique index violation.
func isUnique(err error) bool { return hasNumber(err, errUniqueConstraint, errUniqueIndex) }

// isRetryable reports whether a transaction that failed with err should be
// run again from the start.
func isRetryable(err error) bool { return hasNumber(err, retryableNumbers...) }

// interpretError maps a driver error to the sentinel a caller may branch
// on, keeping the driver error in the chain. A unique violation becomes
// onUnique; every other error is returned unchanged.
func interpretError(err error, onUnique error) error {
	if err == nil {
		return nil
	}
	if onUnique != nil && isUnique(err) {
		return fmt.Errorf("%w: %w", onUnique, err)
	}
	return err
}
