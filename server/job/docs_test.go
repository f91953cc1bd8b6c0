package job

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fence is one fenced code block of a Markdown file.
type fence struct {
	info string // the text after the opening ```
	line int    // line of the opening ```
	body string
}

func readFences(t *testing.T, path string) []fence {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }() // read only: a failed close loses nothing read
	var out []fence
	var cur *fence
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(line, "```"):
			cur = &fence{info: strings.TrimSpace(strings.TrimPrefix(line, "```")), line: n}
		case cur != nil && line == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.body += line + "\n"
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s: unclosed code block at line %d", path, cur.line)
	}
	return out
}

// TestDocsExamples keeps docs/jobs.md honest: every complete job in it
// parses, the invalid example fails with exactly the message shown after
// it, and every expression example compiles.
func TestDocsExamples(t *testing.T) {
	t.Parallel()
	path := filepath.Join("..", "..", "docs", "jobs.md")
	fences := readFences(t, path)
	env, err := celEnv()
	if err != nil {
		t.Fatal(err)
	}
	jobs, invalid, exprs := 0, 0, 0
	for i, f := range fences {
		switch {
		case f.info == "yaml" && strings.HasPrefix(f.body, "name:"):
			jobs++
			if _, err := Parse([]byte(f.body)); err != nil {
				t.Errorf("%s:%d: example job does not parse:\n%v", path, f.line, err)
			}
		case f.info == "yaml invalid":
			invalid++
			_, err := Parse([]byte(f.body))
			if err == nil {
				t.Errorf("%s:%d: invalid example parses", path, f.line)
				continue
			}
			if i+1 >= len(fences) || fences[i+1].info != "text" {
				t.Errorf("%s:%d: invalid example is not followed by a text block with its errors", path, f.line)
				continue
			}
			if got, want := err.Error(), strings.TrimSuffix(fences[i+1].body, "\n"); got != want {
				t.Errorf("%s:%d: errors shown do not match Parse:\ngot:\n%s\nshown:\n%s", path, fences[i+1].line, got, want)
			}
		case f.info == "cel":
			for _, src := range strings.Split(strings.TrimSpace(f.body), "\n") {
				exprs++
				if _, iss := env.Compile(src); iss.Err() != nil {
					t.Errorf("%s:%d: expression %q does not compile: %v", path, f.line, src, iss.Err())
				}
			}
		}
	}
	if jobs < 8 || invalid != 1 || exprs < 10 {
		t.Errorf("found %d example jobs, %d invalid examples and %d expressions; the test no longer sees the examples", jobs, invalid, exprs)
	}
}
