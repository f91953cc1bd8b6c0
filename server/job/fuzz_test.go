package job

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error it reports
// carries a message, and that whatever it accepts survives a trip through
// the canonical form unchanged. The seed corpus (every valid and invalid
// file of the tests) runs in normal `go test`.
func FuzzParse(f *testing.F) {
	seeds := []string{
		everything,
		"name: j\ntasks:\n  - name: a\n    run: [x]\n",
		`{"name": "j", "tasks": [{"name": "a", "run": ["x"]}]}`,
		"name: j\ntasks:\n  - &t {name: a, run: [x]}\n  - {<<: *t, name: b, needs: [a]}\n",
		"name: j\ntasks:\n  - name: a\n    run: [x, '${{ [1, {\"a\": 2}] }}', '$${{ x }}']\n    for_each: {items: [1]}\n",
		"",
		"---\n---\n",
		"[",
		"name: j\ntasks: [{name: a, run: [x], needs: [a]}]\n",
		"\xff\xfe",
	}
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		s, err := Parse(src)
		if err != nil {
			if s != nil {
				t.Fatalf("Parse() returned a spec and an error: %v", err)
			}
			var e *Error
			if !errors.As(err, &e) || len(e.Errs) == 0 {
				t.Fatalf("Parse() error = %#v, want *Error with problems", err)
			}
			for _, fe := range e.Errs {
				if fe.Msg == "" {
					t.Fatalf("Parse() problem without a message: %+v", fe)
				}
			}
			if e.Error() == "" {
				t.Fatal("Error() is empty")
			}
			return
		}
		c, err := s.Canonical()
		if err != nil {
			t.Fatalf("Canonical() error: %v", err)
		}
		s2, err := Decode(c)
		if err != nil {
			t.Fatalf("Decode(Canonical()) error: %v\ncanonical: %s", err, c)
		}
		c2, err := s2.Canonical()
		if err != nil {
			t.Fatalf("Canonical() error: %v", err)
		}
		if !bytes.Equal(c, c2) {
			t.Fatalf("canonical form changed after a round trip:\n%s\n%s", c, c2)
		}
		x, err := CompileExprs(s)
		if err != nil {
			t.Fatalf("CompileExprs() of a parsed spec: %v", err)
		}
		// Evaluating with empty variables may fail but must not panic.
		for _, task := range s.Tasks {
			v := &Vars{Params: s.Params}
			_, _ = x.TaskWhen(task.Name, v)
			for k := range task.Needs {
				_, _ = x.EdgeWhen(task.Name, k, v)
			}
			if task.ForEach != nil {
				_, _ = x.ForEachItems(task.Name, v)
			}
			_, _, _, _ = x.Expand(task.Name, v)
		}
	})
}
