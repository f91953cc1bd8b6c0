package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBadJobFiles applies invalid job files to a real batond: each is
// rejected naming the task and field at fault, and nothing is stored.
func TestBadJobFiles(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	good := c.apply(`
name: good
tasks:
  - {name: a, run: [TASK, ok]}
`)
	tests := []struct {
		name string
		src  string
		want []string // all must appear in the error
	}{
		{"unknown field", `
name: bad
tasks:
  - {name: a, run: [x], retires: 2}
`, []string{`task "a"`, "retires"}},
		{"unknown task in needs", `
name: bad
tasks:
  - {name: count-rows, run: [x]}
  - {name: notify, needs: [cout-rows], run: [x]}
`, []string{`task "notify"`, "needs[0]", `"cout-rows"`}},
		{"cycle", `
name: bad
tasks:
  - {name: a, needs: [b], run: [x]}
  - {name: b, needs: [a], run: [x]}
`, []string{"cycle", "a", "b"}},
		{"duplicate task names", `
name: bad
tasks:
  - {name: a, run: [x]}
  - {name: a, run: [y]}
`, []string{`"a"`, "duplicate"}},
		{"empty run", `
name: bad
tasks:
  - {name: a, run: []}
`, []string{`task "a"`, "run"}},
		{"missing run", `
name: bad
tasks:
  - {name: a}
`, []string{`task "a"`, "run"}},
		{"bad duration", `
name: bad
tasks:
  - {name: a, run: [x], timeout: 10 minutes}
`, []string{`task "a"`, "timeout"}},
		{"bad job timeout", `
name: bad
timeout: soon
tasks:
  - {name: a, run: [x]}
`, []string{"timeout"}},
		{"bad edge status", `
name: bad
tasks:
  - {name: a, run: [x]}
  - {name: b, needs: [{task: a, status: done}], run: [x]}
`, []string{`task "b"`, "needs[0].status"}},
		{"bad selector", `
name: bad
tasks:
  - {name: a, run: [x], runs_on: {labels: {"": ssis}}}
`, []string{`task "a"`, "runs_on"}},
		{"bad expression", `
name: bad
tasks:
  - {name: a, run: [x]}
  - {name: b, needs: [a], when: 'tasks["a"].outputs.RowCount ==', run: [x]}
`, []string{`task "b"`, "when"}},
		{"expression reads a task that is not upstream", `
name: bad
tasks:
  - {name: a, run: [x]}
  - {name: b, when: 'tasks["a"].state == "succeeded"', run: [x]}
`, []string{`task "b"`, "when", `"a"`}},
		{"bad overlap", `
name: bad
overlap: sometimes
tasks:
  - {name: a, run: [x]}
`, []string{"overlap"}},
		{"no tasks", `
name: bad
tasks: []
`, []string{"tasks"}},
	}
	for _, tc := range tests {
		_, _, err := c.c.ApplyJob(context.Background(), tc.src)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: ApplyJob = %v, want INVALID_ARGUMENT", tc.name, err)
			continue
		}
		msg := status.Convert(errorsUnwrap(err)).Message()
		for _, w := range tc.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: error %q does not name %q", tc.name, msg, w)
			}
		}
	}

	// The store is unchanged: one job, at its first version.
	jobs, err := c.c.ListJobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].GetName() != "good" || jobs[0].GetVersion() != good.GetVersion() {
		t.Errorf("jobs after bad applies = %v, want only good v%d", jobs, good.GetVersion())
	}

	// The CLI shows the same message and exits 2.
	path := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(path, []byte(tests[1].src), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"apply", "validate"} {
		_, stderr, code := c.cli("job", verb, "-f", path)
		if code != 2 || !strings.Contains(stderr, `"cout-rows"`) || !strings.Contains(stderr, "needs[0]") {
			t.Errorf("baton job %s (bad) = exit %d, stderr %q; want 2 and the problem named", verb, code, stderr)
		}
	}
	if _, err := c.c.GetJob(context.Background(), "bad", 0); status.Code(errorsUnwrap(err)) != codes.NotFound {
		t.Errorf("GetJob(bad) = %v, want NOT_FOUND", err)
	}
}

// errorsUnwrap digs the gRPC status error out of a client error.
func errorsUnwrap(err error) error {
	for e := err; e != nil; {
		if _, ok := status.FromError(e); ok {
			return e
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	return err
}
