package runner

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batonhq/baton/agent/internal/crashpoint"
)

// Started with the argument "runner" the test binary is a runner, as
// baton-agent is; holdEnv may make it hold at a crash point.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "runner" {
		installHold()
		os.Exit(Main(os.Args[2:], os.Stderr))
	}
	goleak.VerifyTestMain(m)
}

// holdEnv names the variable holding a holdSpec in JSON.
const holdEnv = "BATON_TEST_HOLD"

// holdSpec holds a runner of the test binary when attempt ID reaches
// crash point Point: it creates Dir/held and waits until Dir/release
// exists.
type holdSpec struct {
	Point string
	ID    int64
	Dir   string
}

// env returns the environment entry that passes spec on.
func (spec holdSpec) env(t testing.TB) string {
	t.Helper()
	b, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	return holdEnv + "=" + string(b)
}

// release lets the held runner go on.
func (spec holdSpec) release(t testing.TB) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(spec.Dir, "release"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

func installHold() {
	v := os.Getenv(holdEnv)
	if v == "" {
		return
	}
	var spec holdSpec
	if err := json.Unmarshal([]byte(v), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", holdEnv, err)
		os.Exit(2)
	}
	crashpoint.Set(func(point string, id int64) {
		if point != spec.Point || id != spec.ID {
			return
		}
		if err := os.WriteFile(filepath.Join(spec.Dir, "held"), nil, 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		for {
			if _, err := os.Stat(filepath.Join(spec.Dir, "release")); err == nil {
				return
			}
			time.Sleep(5 * time.Millisecond) // polling for the test's file
		}
	})
}
