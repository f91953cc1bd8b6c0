package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
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

// FuzzPlaceholders checks the ${{ }} placeholders of run, env and
// working_dir on any text: splitting never panics and is undone exactly
// by writing the pieces back (with "$${{" for a literal "${{"); text
// without placeholders expands to itself; a secret reference is only ever
// the job file's own text, whole ("secret:NAME", never built by a
// placeholder); and a run param's value reaches the argument and the env
// value it is placed in literally, whatever it holds ("secret:...",
// "}}", "${{ ... }}").
func FuzzPlaceholders(f *testing.F) {
	for _, s := range []string{
		"", "plain", "${{ params.a }}", "$${{ x }}", "$$${{ params.a }}", "a${{ params.a }}b${{params.a}}c",
		"${{", "${{ }}", "${{ '}' }}", "}}", "${{ params.a }}}}", "secret:dbpass", "secret:../x", "secret:${{ params.a }}",
		"${{ 'secret:' + params.a }}", "${{ {'a': {'b': 1} } }}", "\xff",
	} {
		f.Add(s, "secret:other")
	}
	// One job whose env, argument and directory are exactly a param.
	inj := mustCompile(f, map[string]any{
		"name":   "inj",
		"params": map[string]string{"a": ""},
		"tasks": []any{map[string]any{
			"name": "t", "run": []string{"prog", "${{ params.a }}"},
			"env": map[string]string{"X": "${{ params.a }}"}, "working_dir": "${{ params.a }}",
		}},
	})
	f.Fuzz(func(t *testing.T, s, param string) {
		segs, msg := splitTemplate(s)
		if msg != "" {
			if segs != nil {
				t.Fatalf("splitTemplate(%q) returned pieces and the error %q", s, msg)
			}
		} else {
			var b strings.Builder
			exprs := 0
			for _, seg := range segs {
				if seg.expr {
					exprs++
					b.WriteString("${{" + seg.text + "}}")
				} else {
					b.WriteString(strings.ReplaceAll(seg.text, "${{", "$${{"))
				}
			}
			again, msg := splitTemplate(b.String())
			if msg != "" || !slices.Equal(again, segs) {
				t.Fatalf("splitTemplate(%q) = %+v; written back as %q it splits into %+v (%s)", s, segs, b.String(), again, msg)
			}
			if exprs == 0 && (len(segs) != 1 || segs[0].text != strings.ReplaceAll(s, "$${{", "${{")) {
				t.Fatalf("splitTemplate(%q) without placeholders = %+v", s, segs)
			}
		}

		if utf8.ValidString(param) && !strings.ContainsRune(param, 0) {
			v := &Vars{Params: map[string]string{"a": param}}
			argv, env, dir, err := inj.Expand("t", v)
			if err != nil || argv[1] != param || env["X"] != param || dir != param || len(env) != 1 {
				t.Fatalf("param %q expands to argv %q, env %q, dir %q (%v); want it literally", param, argv, env, dir, err)
			}
			if inj.Secrets("t") != nil {
				t.Fatalf("param %q made a secret reference: %q", param, inj.Secrets("t"))
			}
		}

		// s as an env value of a job of its own.
		if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
			return
		}
		src, err := json.Marshal(map[string]any{
			"name":   "p",
			"params": map[string]string{"a": "A"},
			"tasks":  []any{map[string]any{"name": "t", "run": []string{"prog"}, "env": map[string]string{"X": s}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		spec, err := Parse(src)
		if err != nil {
			if name, ok := strings.CutPrefix(s, SecretPrefix); ok && !strings.Contains(name, "${{") && secretNameRE.MatchString(name) {
				t.Fatalf("a valid secret reference %q is refused: %v", s, err)
			}
			return
		}
		x, err := CompileExprs(spec)
		if err != nil {
			t.Fatalf("CompileExprs() of a parsed spec: %v", err)
		}
		_, env, _, err := x.Expand("t", &Vars{Params: map[string]string{"a": "A"}})
		if name, ok := SecretRef(s); ok {
			if got := x.Secrets("t"); got["X"] != name || env["X"] != "" {
				t.Fatalf("env X: %q: Secrets() = %q, env = %q; want the secret %q and no value", s, got, env, name)
			}
			return
		}
		if strings.HasPrefix(s, SecretPrefix) {
			t.Fatalf("env X: %q starts with %q and was accepted, but is no secret reference", s, SecretPrefix)
		}
		if x.Secrets("t") != nil {
			t.Fatalf("env X: %q made a secret reference: %q", s, x.Secrets("t"))
		}
		if err == nil && !strings.Contains(s, "${{") && env["X"] != strings.ReplaceAll(s, "$${{", "${{") {
			t.Fatalf("env X: %q without placeholders expands to %q", s, env["X"])
		}
	})
}

// mustCompile parses a job given as a value JSON encodes and compiles its
// expressions.
func mustCompile(tb testing.TB, job any) *Exprs {
	tb.Helper()
	src, err := json.Marshal(job)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := Parse(src)
	if err != nil {
		tb.Fatalf("Parse(%s) = %v", src, err)
	}
	x, err := CompileExprs(s)
	if err != nil {
		tb.Fatal(err)
	}
	return x
}
