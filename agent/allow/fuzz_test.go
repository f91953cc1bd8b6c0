package allow

import (
	"path"
	"strings"
	"testing"
)

// FuzzAllow checks the program matcher on any pattern and path, in both
// path styles: it never panics; a match is stable (asking again, or with
// the path spelled another way that cleans to the same, gives the same
// answer); a path that matches lies below the pattern's literal directory
// prefix (the elements before the first wildcard), so no pattern reaches
// outside the directory it names; "." and ".." never let a path escape;
// and on Windows the answer does not depend on case.
func FuzzAllow(f *testing.F) {
	seeds := []struct {
		pattern, name string
		windows       bool
	}{
		{"/opt/etl/bin/*", "/opt/etl/bin/load", false},
		{"/opt/etl/bin/*", "/opt/etl/bin/../../../bin/sh", false},
		{"/opt/etl/**", "/opt/etl/a/b/c", false},
		{"/opt/**/bin/*", "/opt/bin/x", false},
		{"/usr/bin/sqlcmd", "/usr/bin/sqlcmd", false},
		{"/a/[b-d]?/\\*", "/a/c1/*", false},
		{"/", "/", false},
		{"/**", "/x", false},
		{`C:\Program Files\Microsoft SQL Server\*\DTS\Binn\DTExec.exe`, `c:\program files\microsoft sql server\160\dts\binn\dtexec.exe`, true},
		{`\\fs01\etl\*`, `\\fs01\etl\x.exe`, true},
		{`D:\etl\**`, `D:\etl\..\x`, true},
		{`D:\[`, `D:\[`, true},
	}
	for _, s := range seeds {
		f.Add(s.pattern, s.name, s.windows)
	}
	f.Fuzz(func(t *testing.T, pattern, name string, windows bool) {
		goos := "linux"
		if windows {
			goos = "windows"
		}
		// The file system stays out of it: the matcher alone is tested.
		p, err := New(Config{GOOS: goos, Programs: []string{pattern}, EvalSymlinks: func(s string) (string, error) { return s, nil }})
		if err != nil {
			return // a refused pattern allows nothing; New said why
		}
		got := p.Match(name)
		if again := p.Match(name); again != got {
			t.Fatalf("Match(%q) with %q = %v, then %v", name, pattern, got, again)
		}
		elems, err := p.split(name)
		if err != nil {
			if got {
				t.Fatalf("Match(%q) with %q = true for a path that is not absolute (%v)", name, pattern, err)
			}
			return
		}
		// Spelled with redundant separators and ".", the path is the
		// same path.
		sep := "/"
		if windows {
			sep = `\`
		}
		if len(elems) > 1 && elems[0] != "//" {
			alt := elems[0] + sep + "." + sep + strings.Join(elems[1:], sep+sep)
			if p.Match(alt) != got {
				t.Fatalf("Match(%q) = %v but Match(%q) = %v", name, got, alt, !got)
			}
		}
		if windows && p.Match(strings.ToUpper(name)) != got {
			t.Fatalf("Windows: Match(%q) = %v, but not for the upper-case path", name, got)
		}
		if !got {
			return
		}
		for _, e := range elems[1:] {
			if e == ".." || e == "." || e == "" {
				t.Fatalf("Match(%q) with %q: the cleaned path still holds %q", name, pattern, e)
			}
		}
		pat := p.programs[0]
		for i, e := range pat {
			if i > 0 && (p.hasMeta(e) || e == "**") {
				break
			}
			if i >= len(elems) || !literalEq(p, e, elems[i]) {
				t.Fatalf("Match(%q) with %q = true, but the path is outside the pattern's directory %q", name, pattern, strings.Join(pat[:i+1], "/"))
			}
		}
		// Without "**" the path has exactly as many elements as the
		// pattern: "*" never crosses a separator.
		if !containsElem(pat, "**") && len(pat) != len(elems) {
			t.Fatalf("Match(%q) with %q = true across a separator (%d elements for %d)", name, pattern, len(elems), len(pat))
		}
	})
}

// literalEq compares a pattern element without wildcards to a name.
func literalEq(p *Policy, pat, name string) bool {
	if !p.windows {
		// An escaped character stands for itself.
		var b strings.Builder
		for i := 0; i < len(pat); i++ {
			if pat[i] == '\\' && i+1 < len(pat) {
				i++
			}
			b.WriteByte(pat[i])
		}
		pat = b.String()
	}
	ok, _ := path.Match(pat, name)
	return pat == name || ok
}

func containsElem(elems []string, e string) bool {
	for _, x := range elems {
		if x == e {
			return true
		}
	}
	return false
}
