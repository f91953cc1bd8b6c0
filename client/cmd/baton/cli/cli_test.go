package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/batonhq/baton/client/cmd/baton/cli"
	"github.com/batonhq/baton/client/internal/fakeserver"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// now is the CLI's clock in tests: ten minutes after the fixture runs
// started.
var now = fakeserver.Base.Add(10 * time.Minute)

// result is what one baton invocation did.
type result struct {
	code           int
	stdout, stderr string
}

type testBundle struct {
	srv *fakeserver.Server
	// env holds the environment variables baton sees.
	env map[string]string
	// stdin is what baton reads for -f -.
	stdin string
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	return &testBundle{srv: fakeserver.Start(t), env: map[string]string{}}
}

// run runs baton in-process against the fake server with args.
func (b *testBundle) run(t *testing.T, args ...string) result {
	t.Helper()
	return b.runRaw(t, append([]string{"--addr", b.srv.Addr()}, args...)...)
}

// runRaw runs baton with exactly args.
func (b *testBundle) runRaw(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	env := &cli.Env{
		Stdin:  strings.NewReader(b.stdin),
		Stdout: &stdout,
		Stderr: &stderr,
		LookupEnv: func(k string) (string, bool) {
			v, ok := b.env[k]
			return v, ok
		},
		Now:      func() time.Time { return now },
		Location: time.UTC,
		Version:  "1.2.3-test",
	}
	code := env.Run(ctx, args)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// want checks a result against the exit code and exact outputs.
func (r result) want(t *testing.T, code int, stdout, stderr string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code = %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	if diff := cmp.Diff(stdout, r.stdout); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(stderr, r.stderr); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
}

// writeFile writes a file in a fresh temporary directory and returns its
// path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// lines is a readable way to write expected multi-line output.
func lines(ls ...string) string { return strings.Join(ls, "\n") + "\n" }
