package job

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// parseErrs parses src and returns its errors' texts, failing the test
// when it parses.
func parseErrs(t *testing.T, src string) []string {
	t.Helper()
	_, err := Parse([]byte(src))
	var je *Error
	if !errors.As(err, &je) {
		t.Fatalf("Parse = %v, want a *job.Error", err)
	}
	var out []string
	for _, e := range je.Errs {
		out = append(out, e.Path+": "+e.Msg)
	}
	return out
}

func wantOne(t *testing.T, what string, got []string, path, says string) {
	t.Helper()
	if len(got) != 1 || !strings.HasPrefix(got[0], path+": ") || !strings.Contains(got[0], says) {
		t.Errorf("%s: errors %q, want one at %s saying %q", what, got, path, says)
	}
}

// TestArgumentLimits: an argument or an environment entry the child could
// not be started with is refused when the job is applied, naming the task
// and field, instead of failing every run.
func TestArgumentLimits(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", MaxArgBytes+1)
	got := parseErrs(t, "name: j\ntasks:\n  - name: load\n    run: [/opt/etl/load, --rows, '"+long+"']\n")
	wantOne(t, "long argument", got, "tasks[load].run[2]", "at most 131071")
	got = parseErrs(t, "name: j\ntasks:\n  - name: load\n    run: [x]\n    env: {BIG: '"+long+"'}\n")
	wantOne(t, "long env value", got, "tasks[load].env.BIG", "NAME=value")
	// Just under the limit is fine.
	ok := strings.Repeat("x", MaxArgBytes-10)
	if _, err := Parse([]byte("name: j\ntasks:\n  - name: load\n    run: [x, '" + ok + "']\n    env: {V: '" + ok + "'}\n")); err != nil {
		t.Errorf("arguments under the limit: %v", err)
	}
}

// TestHugeWholeNumber: a whole number beyond YAML's integers is reported
// with the allowed range, not as "not a number".
func TestHugeWholeNumber(t *testing.T) {
	t.Parallel()
	got := parseErrs(t, "name: j\ntasks:\n  - name: a\n    run: [x]\n    retries: 99999999999999999999\n")
	wantOne(t, "huge retries", got, "tasks[a].retries", "whole number between 0 and")
	got = parseErrs(t, "name: j\ntasks:\n  - name: a\n    run: [x]\n    retries: 2.5\n")
	wantOne(t, "fractional retries", got, "tasks[a].retries", "must be a whole number, not")
}

// TestLongCycle: a cycle through many tasks is reported on one short
// line: its first and last tasks and its length.
func TestLongCycle(t *testing.T) {
	t.Parallel()
	const n = 10000
	var b strings.Builder
	b.WriteString("name: ring\ntasks:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - {name: t%d, run: [x], needs: [t%d]}\n", i, (i+1)%n)
	}
	got := parseErrs(t, b.String())
	if len(got) != 1 || !strings.Contains(got[0], fmt.Sprintf("dependency cycle of %d tasks", n)) ||
		!strings.Contains(got[0], "more ...") || len(got[0]) > 400 {
		t.Fatalf("a %d-task cycle is reported as %d errors, the first %d characters long: %.300q", n, len(got), len(got[0]), got[0])
	}
}

// TestAliasAmplification: a small file whose aliases expand into a huge
// job is refused while it is read, before the text is copied out.
func TestAliasAmplification(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("name: bomb\ndescription: &d \"" + strings.Repeat("x", 100_000) + "\"\ntasks:\n")
	for i := range 1000 {
		fmt.Fprintf(&b, "  - {name: t%d, run: [x], description: *d}\n", i)
	}
	if b.Len() > MaxSourceSize {
		t.Fatalf("the test file is %d bytes, over the file limit: it would not test the aliases", b.Len())
	}
	got := parseErrs(t, b.String())
	found := false
	for _, e := range got {
		found = found || strings.Contains(e, "too large once its aliases are expanded (more than 2 MiB of text)")
	}
	if !found {
		t.Fatalf("errors %.300q, want the expansion refused", got)
	}
	// A few aliases stay fine.
	small := "name: ok\ndescription: &d \"" + strings.Repeat("x", 1000) + "\"\ntasks:\n  - {name: a, run: [x], description: *d}\n  - {name: b, run: [x], description: *d}\n"
	if _, err := Parse([]byte(small)); err != nil {
		t.Errorf("a file with two aliases: %v", err)
	}
}
