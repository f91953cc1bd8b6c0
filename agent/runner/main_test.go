package runner

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Started with the argument "runner" the test binary is a runner, as
// baton-agent is.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "runner" {
		os.Exit(Main(os.Args[2:], os.Stderr))
	}
	goleak.VerifyTestMain(m)
}
