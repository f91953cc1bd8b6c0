package allow

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func mustNew(t testing.TB, c Config) *Policy {
	t.Helper()
	p, err := New(c)
	if err != nil {
		t.Fatalf("New(%+v) error: %v", c, err)
	}
	return p
}

func TestMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		goos     string
		patterns []string
		path     string
		want     bool
	}{
		{name: "unix exact", goos: "linux", patterns: []string{"/usr/bin/sqlcmd"}, path: "/usr/bin/sqlcmd", want: true},
		{name: "unix exact other file", goos: "linux", patterns: []string{"/usr/bin/sqlcmd"}, path: "/usr/bin/sqlcmd2", want: false},
		{name: "unix star one level", goos: "linux", patterns: []string{"/opt/etl/bin/*"}, path: "/opt/etl/bin/load", want: true},
		{name: "unix star not deeper", goos: "linux", patterns: []string{"/opt/etl/bin/*"}, path: "/opt/etl/bin/sub/load", want: false},
		{name: "unix star not the dir above", goos: "linux", patterns: []string{"/opt/etl/bin/*"}, path: "/opt/etl/load", want: false},
		{name: "unix dotdot cleaned away", goos: "linux", patterns: []string{"/opt/etl/bin/*"}, path: "/opt/etl/bin/../../../bin/sh", want: false},
		{name: "unix dotdot cleaned inside", goos: "linux", patterns: []string{"/opt/etl/bin/*"}, path: "/opt/etl/x/../bin/load", want: true},
		{name: "unix case matters", goos: "linux", patterns: []string{"/opt/etl/bin/*"}, path: "/OPT/etl/bin/load", want: false},
		{name: "unix doublestar deep", goos: "linux", patterns: []string{"/opt/etl/**"}, path: "/opt/etl/a/b/c/load", want: true},
		{name: "unix doublestar zero", goos: "linux", patterns: []string{"/opt/etl/**/load"}, path: "/opt/etl/load", want: true},
		{name: "unix doublestar middle", goos: "linux", patterns: []string{"/opt/**/bin/load"}, path: "/opt/a/b/bin/load", want: true},
		{name: "unix doublestar prefix only", goos: "linux", patterns: []string{"/opt/etl/**"}, path: "/opt/etlx/load", want: false},
		{name: "unix class", goos: "linux", patterns: []string{"/opt/etl/v[0-9]/run"}, path: "/opt/etl/v7/run", want: true},
		{name: "unix relative path", goos: "linux", patterns: []string{"/opt/etl/bin/*"}, path: "opt/etl/bin/load", want: false},
		{name: "unix second pattern", goos: "linux", patterns: []string{"/a/*", "/usr/bin/sqlcmd"}, path: "/usr/bin/sqlcmd", want: true},
		{name: "windows dtexec any version", goos: "windows",
			patterns: []string{`C:\Program Files\Microsoft SQL Server\*\DTS\Binn\DTExec.exe`},
			path:     `C:\Program Files\Microsoft SQL Server\160\DTS\Binn\DTExec.exe`, want: true},
		{name: "windows case-insensitive", goos: "windows",
			patterns: []string{`C:\Program Files\Microsoft SQL Server\*\DTS\Binn\DTExec.exe`},
			path:     `c:\PROGRAM FILES\microsoft sql server\150\dts\binn\dtexec.EXE`, want: true},
		{name: "windows forward slashes", goos: "windows", patterns: []string{`D:\etl\scripts\*.ps1`}, path: `D:/etl/scripts/load.ps1`, want: true},
		{name: "windows star not across", goos: "windows", patterns: []string{`D:\etl\*`}, path: `D:\etl\sub\x.exe`, want: false},
		{name: "windows other drive", goos: "windows", patterns: []string{`D:\etl\*`}, path: `E:\etl\x.exe`, want: false},
		{name: "windows dotdot", goos: "windows", patterns: []string{`D:\etl\*`}, path: `D:\etl\..\Windows\System32\cmd.exe`, want: false},
		{name: "windows share", goos: "windows", patterns: []string{`\\fs01\etl\bin\*`}, path: `\\FS01\ETL\bin\x.exe`, want: true},
		{name: "windows share other server", goos: "windows", patterns: []string{`\\fs01\etl\bin\*`}, path: `\\fs02\etl\bin\x.exe`, want: false},
		{name: "windows share is not a drive root", goos: "windows", patterns: []string{`\\fs01\etl\bin\*`}, path: `C:\fs01\etl\bin\x.exe`, want: false},
		{name: "windows relative", goos: "windows", patterns: []string{`D:\etl\*`}, path: `etl\x.exe`, want: false},
		{name: "windows drive relative", goos: "windows", patterns: []string{`D:\etl\*`}, path: `D:etl\x.exe`, want: false},
		{name: "windows doublestar", goos: "windows", patterns: []string{`D:\etl\**\*.exe`}, path: `D:\ETL\a\b\run.exe`, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := mustNew(t, Config{Programs: tc.patterns, GOOS: tc.goos})
			if got := p.Match(tc.path); got != tc.want {
				t.Errorf("Match(%q) with %q = %v, want %v", tc.path, tc.patterns, got, tc.want)
			}
		})
	}
}

func TestNewRefusesBadEntries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		c    Config
		want string
	}{
		{name: "relative unix", c: Config{GOOS: "linux", Programs: []string{"bin/*"}}, want: `--allow "bin/*": not an absolute path`},
		{name: "empty", c: Config{GOOS: "linux", Programs: []string{""}}, want: `--allow "": empty path`},
		{name: "bad class", c: Config{GOOS: "linux", Programs: []string{"/opt/[a"}}, want: `--allow "/opt/[a": element "[a": syntax error in pattern`},
		{name: "windows no drive", c: Config{GOOS: "windows", Programs: []string{`\etl\*`}}, want: `not an absolute path`},
		{name: "windows device path", c: Config{GOOS: "windows", Programs: []string{`\\?\C:\etl\x.exe`}}, want: `device paths`},
		{name: "windows unix path", c: Config{GOOS: "windows", Programs: []string{`/opt/x`}}, want: `not an absolute path`},
		{name: "relative dir", c: Config{GOOS: "linux", Dirs: []string{"data"}}, want: `--allow-dir "data": not an absolute path`},
		{name: "bad env", c: Config{GOOS: "linux", Env: []string{"A=B"}}, want: `--allow-env "A=B": not an environment name`},
		{name: "bad env pattern", c: Config{GOOS: "linux", Env: []string{"LD_["}}, want: `--allow-env "LD_[": syntax error`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tc.c)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New(%+v) error = %v, want it to contain %q", tc.c, err, tc.want)
			}
		})
	}
}

func TestProgramEvaluatesSymlinks(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links need privileges on Windows")
	}
	t.Parallel()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	allowed := filepath.Join(dir, "allowed")
	other := filepath.Join(dir, "other")
	for _, d := range []string{allowed, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(allowed, "load"), filepath.Join(other, "sh")} {
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// allowed/escape -> other/sh: inside the pattern's directory by name,
	// outside it in fact.
	if err := os.Symlink(filepath.Join(other, "sh"), filepath.Join(allowed, "escape")); err != nil {
		t.Fatal(err)
	}
	// other/load -> allowed/load: outside by name, the allowed file in fact.
	if err := os.Symlink(filepath.Join(allowed, "load"), filepath.Join(other, "load")); err != nil {
		t.Fatal(err)
	}
	// A link to the allowed directory, and a pattern spelled through it.
	if err := os.Symlink(allowed, filepath.Join(dir, "via")); err != nil {
		t.Fatal(err)
	}
	p := mustNew(t, Config{Programs: []string{filepath.Join(allowed, "*")}})

	if _, err := p.Program(filepath.Join(allowed, "escape")); err == nil {
		t.Fatal("Program(allowed/escape -> other/sh) = nil error, want denied")
	} else {
		var d *Denied
		if !errors.As(err, &d) || !strings.Contains(err.Error(), "a link to "+filepath.Join(other, "sh")) {
			t.Errorf("Program(allowed/escape) error = %v, want a *Denied naming the link's target", err)
		}
	}
	got, err := p.Program(filepath.Join(other, "load"))
	if err != nil || got != filepath.Join(allowed, "load") {
		t.Errorf("Program(other/load -> allowed/load) = %q, %v; want %q, nil (the real file is allowed and is what starts)", got, err, filepath.Join(allowed, "load"))
	}
	if got, err := p.Program(filepath.Join(allowed, "load")); err != nil || got != filepath.Join(allowed, "load") {
		t.Errorf("Program(allowed/load) = %q, %v; want it allowed", got, err)
	}
	if got, err := p.Program(filepath.Join(allowed, "missing")); err != nil || got != filepath.Join(allowed, "missing") {
		t.Errorf("Program(allowed/missing) = %q, %v; want it allowed by name", got, err)
	}
	if _, err := p.Program(filepath.Join(other, "missing")); err == nil {
		t.Error("Program(other/missing) = nil error, want denied")
	}

	// A pattern written through a link matches the real files it named.
	pv := mustNew(t, Config{Programs: []string{filepath.Join(dir, "via", "*")}})
	if got, err := pv.Program(filepath.Join(allowed, "load")); err != nil || got != filepath.Join(allowed, "load") {
		t.Errorf("pattern via a link: Program(allowed/load) = %q, %v; want it allowed", got, err)
	}
	// A literal pattern naming a link allows its target.
	pl := mustNew(t, Config{Programs: []string{filepath.Join(other, "load")}})
	if _, err := pl.Program(filepath.Join(other, "load")); err != nil {
		t.Errorf("literal pattern naming a link: Program = %v, want allowed", err)
	}
}

func TestEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		goos    string
		allow   []string
		names   []string
		wantErr string
	}{
		{name: "plain names", goos: "linux", names: []string{"SQLCMDSERVER", "LOAD_DATE"}},
		{name: "preload", goos: "linux", names: []string{"A", "LD_PRELOAD"}, wantErr: "environment variable LD_PRELOAD is not allowed: LD_PRELOAD can change which program runs (rule LD_*); allow it with --allow-env LD_PRELOAD"},
		{name: "library path", goos: "linux", names: []string{"LD_LIBRARY_PATH"}, wantErr: "LD_LIBRARY_PATH"},
		{name: "audit", goos: "linux", names: []string{"LD_AUDIT"}, wantErr: "LD_AUDIT"},
		{name: "dyld", goos: "darwin", names: []string{"DYLD_INSERT_LIBRARIES"}, wantErr: "rule DYLD_*"},
		{name: "path", goos: "linux", names: []string{"PATH"}, wantErr: "PATH"},
		{name: "path allowed", goos: "linux", allow: []string{"PATH"}, names: []string{"PATH"}},
		{name: "lower-case path is another name on unix", goos: "linux", names: []string{"path"}},
		{name: "lower-case path on windows", goos: "windows", names: []string{"Path"}, wantErr: "Path"},
		{name: "allowed by pattern", goos: "linux", allow: []string{"LD_*"}, names: []string{"LD_LIBRARY_PATH"}},
		{name: "allow one keeps others", goos: "linux", allow: []string{"LD_LIBRARY_PATH"}, names: []string{"LD_LIBRARY_PATH", "LD_PRELOAD"}, wantErr: "LD_PRELOAD"},
		{name: "windows allow folds", goos: "windows", allow: []string{"path"}, names: []string{"PATH"}},
		{name: "bash env", goos: "linux", names: []string{"BASH_ENV"}, wantErr: "BASH_ENV"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := mustNew(t, Config{GOOS: tc.goos, Env: tc.allow, Programs: []string{"/x"}[:0]})
			err := p.Env(tc.names)
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("Env(%q) = %v, want nil", tc.names, err)
				}
				return
			}
			var d *Denied
			if !errors.As(err, &d) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Env(%q) = %v, want a *Denied containing %q", tc.names, err, tc.wantErr)
			}
		})
	}
}

func TestDir(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		goos    string
		dirs    []string
		dir     string
		wantErr string
	}{
		{name: "empty always", goos: "linux", dir: ""},
		{name: "none allowed", goos: "linux", dir: "/data/x", wantErr: "working_dir /data/x is not allowed: no --allow-dir is given, so a task must leave working_dir empty"},
		{name: "the root", goos: "linux", dirs: []string{"/data/etl"}, dir: "/data/etl"},
		{name: "below", goos: "linux", dirs: []string{"/data/etl"}, dir: "/data/etl/2026/11"},
		{name: "sibling prefix", goos: "linux", dirs: []string{"/data/etl"}, dir: "/data/etl2", wantErr: "it is in none of --allow-dir /data/etl"},
		{name: "dotdot out", goos: "linux", dirs: []string{"/data/etl"}, dir: "/data/etl/../secret", wantErr: "none of"},
		{name: "windows case", goos: "windows", dirs: []string{`D:\ETL\Runs`}, dir: `d:\etl\runs\2026`},
		{name: "windows other", goos: "windows", dirs: []string{`D:\ETL\Runs`}, dir: `d:\etl`, wantErr: "none of"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := mustNew(t, Config{GOOS: tc.goos, Dirs: tc.dirs})
			got, err := p.Dir(tc.dir)
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("Dir(%q) = %v, want nil", tc.dir, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || got != "" {
				t.Errorf("Dir(%q) = %q, %v; want an error containing %q", tc.dir, got, err, tc.wantErr)
			}
		})
	}
}

func TestAnyAllowsEverything(t *testing.T) {
	t.Parallel()
	p := mustNew(t, Config{Any: true})
	if got, err := p.Program("/bin/sh"); err != nil || got != "/bin/sh" {
		t.Errorf("Any: Program(/bin/sh) = %q, %v", got, err)
	}
	if err := p.Env([]string{"LD_PRELOAD", "PATH"}); err != nil {
		t.Errorf("Any: Env = %v", err)
	}
	if _, err := p.Dir("/anywhere"); err != nil {
		t.Errorf("Any: Dir = %v", err)
	}
}

func TestMessageListsPatterns(t *testing.T) {
	t.Parallel()
	p := mustNew(t, Config{GOOS: "linux", Programs: []string{"/opt/etl/bin/*"}, EvalSymlinks: func(s string) (string, error) { return s, nil }})
	_, err := p.Program("/bin/sh")
	want := "program /bin/sh is not allowed: it matches none of --allow /opt/etl/bin/*"
	if err == nil || err.Error() != want {
		t.Errorf("Program(/bin/sh) error = %v, want %q", err, want)
	}
	none := mustNew(t, Config{GOOS: "linux"})
	if _, err := none.Program("/bin/sh"); err == nil || !strings.Contains(err.Error(), "none are given") {
		t.Errorf("empty policy: Program(/bin/sh) error = %v, want it to say no pattern is given", err)
	}
}
