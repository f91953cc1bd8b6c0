// Package allow is the agent's own policy of what a task may run on its
// host: which programs, which environment names and which working
// directories. The agent checks every StartTask against it before
// anything starts, so a control plane that has been taken over cannot
// turn the host into a shell: it can only run what the host's
// administrator listed.
//
// # Programs
//
// A program pattern is an absolute path whose elements may hold the
// wildcards of [path.Match]: `*` and `?` match within one element (never
// across a separator) and `[...]` is a character class. An element that is
// exactly `**` matches any number of elements, none included. Examples:
//
//	/opt/etl/bin/*                       any file directly in /opt/etl/bin
//	/opt/etl/**                          any file below /opt/etl
//	/usr/bin/sqlcmd                      that one file
//	C:\Program Files\Microsoft SQL Server\*\DTS\Binn\DTExec.exe
//
// On Windows patterns and paths are compared case-insensitively, `\` and
// `/` both separate elements (so `\` cannot escape a wildcard there) and
// a path starts with a drive (`C:\`) or a share (`\\server\share\`). On
// Unix `\` escapes the next character, as in path.Match.
//
// What is matched is the program that would really run: the agent first
// resolves argv[0] exactly as the child will be started (a name without a
// directory through the agent's PATH, a relative path against the task's
// working directory), then evaluates every symbolic link in the result.
// That real path must match a pattern, and it is what the agent starts,
// so a link such as /opt/etl/bin/x -> /bin/sh does not escape
// /opt/etl/bin/*, and a link changed between the check and the start
// cannot change what runs. Because patterns name real paths, the
// directories a pattern spells out before its first wildcard are resolved
// once, when the policy is made (/usr/bin/sqlcmd may be a link to
// /opt/mssql-tools18/bin/sqlcmd; the pattern then allows that file): a
// pattern means what its text named when the agent started. A program
// that does not exist matches by its path as given (starting it fails
// anyway).
//
// # Environment
//
// Some environment variables change which code a program runs: the
// dynamic loader's (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT and every other
// LD_*, DYLD_* on macOS), PATH and PATHEXT (what an allowed script runs
// when it calls another program by name), and the start-up hooks of
// common interpreters (BASH_ENV, ENV, PYTHONPATH, PERL5OPT, NODE_OPTIONS,
// JAVA_TOOL_OPTIONS, ...; see [DeniedEnv]). A task may not set them unless
// Config.Env names them. The agent's own environment is not checked: the
// administrator set it.
//
// # Working directories
//
// A task that names no working directory runs in the agent's own, which
// is always allowed. A task that names one needs it to be one of
// Config.Dirs or below one (after evaluating symbolic links, and the
// agent then uses that real path); with no Dirs, a task may not name a
// working directory at all. On Windows the working directory is searched
// for DLLs, so it is part of what runs.
package allow

import (
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// Config is what an agent allows. A zero Config allows nothing.
type Config struct {
	// Programs are the program patterns (see the package doc).
	Programs []string
	// Env are environment names a task may set although they are in
	// DeniedEnv; each may be a path.Match pattern such as "LD_*".
	Env []string
	// Dirs are the roots a task's working directory must be in. Each is
	// an absolute directory.
	Dirs []string
	// Any turns every rule off: any program, environment and working
	// directory. Any program can set its own environment and change its
	// own directory, so rules on those would protect nothing then.
	Any bool
	// GOOS says whose path syntax and case rules apply. Defaults to
	// runtime.GOOS; tests set "windows" or "linux" to try either.
	GOOS string
	// EvalSymlinks resolves symbolic links. Defaults to
	// filepath.EvalSymlinks; with a GOOS other than runtime.GOOS it
	// defaults to returning the path unchanged.
	EvalSymlinks func(string) (string, error)
}

// DeniedEnv lists the environment names a task may not set unless
// Config.Env allows them. A name ending in "*" covers every name with
// that prefix.
var DeniedEnv = []string{
	// The dynamic loaders: code injected into any program.
	"LD_*", "DYLD_*", "_RLD*",
	// What a program started by name resolves to.
	"PATH", "PATHEXT", "COMSPEC",
	// Start-up hooks and module paths of shells and interpreters.
	"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "IFS", "CDPATH",
	"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT",
	"PERL5LIB", "PERLLIB", "PERL5OPT", "PERL5DB",
	"RUBYLIB", "RUBYOPT",
	"NODE_OPTIONS", "NODE_PATH",
	"JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
	"PSModulePath",
	"GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF",
	"MALLOC_CHECK_", "GLIBC_TUNABLES",
}

// Denied is the error of a check that failed: What is refused ("program
// /bin/sh") and Why ("it matches none of --allow /opt/etl/bin/*").
type Denied struct {
	What string
	Why  string
}

func (d *Denied) Error() string { return d.What + " is not allowed: " + d.Why }

// Policy is a compiled Config. Its methods are safe for concurrent use.
type Policy struct {
	any      bool
	windows  bool
	eval     func(string) (string, error)
	raw      []string   // Config.Programs as given, for messages
	programs [][]string // compiled patterns, as elements
	env      []string   // allowed names (patterns), folded on Windows
	rawDirs  []string   // Config.Dirs as given, for messages
	dirs     [][]string // roots, as elements
}

// Any returns a policy that allows everything (Config.Any).
func Any() *Policy { return &Policy{any: true} }

// New compiles c. It fails, naming the entry, on a pattern or directory
// that is not absolute or is malformed.
func New(c Config) (*Policy, error) {
	goos := c.GOOS
	if goos == "" {
		goos = runtime.GOOS
	}
	p := &Policy{any: c.Any, windows: goos == "windows", eval: c.EvalSymlinks}
	if p.eval == nil {
		if goos == runtime.GOOS {
			p.eval = filepath.EvalSymlinks
		} else {
			p.eval = func(s string) (string, error) { return s, nil }
		}
	}
	if p.any {
		return p, nil
	}
	var errs []error
	for _, raw := range c.Programs {
		elems, err := p.compile(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("--allow %q: %w", raw, err))
			continue
		}
		p.raw = append(p.raw, raw)
		p.programs = p.addPattern(p.programs, elems)
		if real, ok := p.resolvePrefix(raw, elems); ok {
			p.programs = p.addPattern(p.programs, real)
		}
	}
	for _, name := range c.Env {
		if name == "" || strings.ContainsAny(name, "=\x00") {
			errs = append(errs, fmt.Errorf("--allow-env %q: not an environment name", name))
			continue
		}
		if _, err := path.Match(name, ""); err != nil {
			errs = append(errs, fmt.Errorf("--allow-env %q: %w", name, err))
			continue
		}
		p.env = append(p.env, p.fold(name))
	}
	for _, raw := range c.Dirs {
		elems, err := p.split(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("--allow-dir %q: %w", raw, err))
			continue
		}
		p.rawDirs = append(p.rawDirs, raw)
		p.dirs = p.addPattern(p.dirs, elems)
		if real, err := p.eval(raw); err == nil {
			if re, err := p.split(real); err == nil {
				p.dirs = p.addPattern(p.dirs, re)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// AllowsAny reports whether the policy allows everything.
func (p *Policy) AllowsAny() bool { return p.any }

// Programs returns the program patterns as given.
func (p *Policy) Programs() []string { return slices.Clone(p.raw) }

func (p *Policy) addPattern(list [][]string, elems []string) [][]string {
	for _, have := range list {
		if slices.Equal(have, elems) {
			return list
		}
	}
	return append(list, elems)
}

// compile checks a program pattern and splits it into elements.
func (p *Policy) compile(raw string) ([]string, error) {
	elems, err := p.split(raw)
	if err != nil {
		return nil, err
	}
	for _, e := range elems[1:] {
		if _, err := path.Match(e, ""); err != nil {
			return nil, fmt.Errorf("element %q: %w", e, err)
		}
	}
	return elems, nil
}

// resolvePrefix evaluates the symbolic links in the part of a pattern
// before its first wildcard (all of it when it has none) and returns the
// pattern with that part replaced, when it differs.
func (p *Policy) resolvePrefix(raw string, elems []string) ([]string, bool) {
	n := len(elems)
	for i, e := range elems[1:] {
		if p.hasMeta(e) {
			n = i + 1
			break
		}
	}
	prefix := p.prefixText(raw, n)
	if prefix == "" {
		return nil, false
	}
	real, err := p.eval(prefix)
	if err != nil {
		return nil, false
	}
	re, err := p.split(real)
	if err != nil {
		return nil, false
	}
	out := slices.Concat(re, elems[n:])
	if slices.Equal(out, elems) {
		return nil, false
	}
	return out, true
}

// prefixText returns the first n elements of raw (a valid absolute path
// or pattern) as a path of the policy's OS, "" when that is only the root.
func (p *Policy) prefixText(raw string, n int) string {
	s := raw
	if p.windows {
		s = strings.ReplaceAll(raw, `\`, "/")
	}
	vol := ""
	switch {
	case p.windows && strings.HasPrefix(s, "//"):
		vol, s = "//", s[2:]
	case p.windows:
		vol, s = s[:2], s[2:]
	}
	parts := strings.Split(path.Clean("/"+s), "/")[1:]
	if n-1 > len(parts) || n <= 1 {
		return ""
	}
	out := strings.Join(parts[:n-1], "/")
	if vol == "//" {
		out = vol + out
	} else {
		out = vol + "/" + out
	}
	if p.windows {
		out = strings.ReplaceAll(out, "/", `\`)
	}
	return out
}

func (p *Policy) hasMeta(e string) bool {
	meta := `*?[`
	if !p.windows {
		meta += `\`
	}
	return strings.ContainsAny(e, meta)
}

// fold lower-cases s on Windows, where names and paths ignore case.
func (p *Policy) fold(s string) string {
	if p.windows {
		return strings.ToLower(s)
	}
	return s
}

// split turns an absolute path (or pattern) into its elements: the
// volume first ("" on Unix, "c:" or "//" on Windows), then each name,
// cleaned (no ".", "..", or empty names). It fails on a relative path.
func (p *Policy) split(s string) ([]string, error) {
	if s == "" {
		return nil, errors.New("empty path")
	}
	if strings.ContainsRune(s, 0) {
		return nil, errors.New("path holds a NUL byte")
	}
	vol := ""
	if p.windows {
		s = strings.ToLower(strings.ReplaceAll(s, `\`, "/"))
		switch {
		case strings.HasPrefix(s, "//?/"), strings.HasPrefix(s, "//./"):
			return nil, errors.New(`device paths (\\?\, \\.\) are not supported; write the drive or share path`)
		case strings.HasPrefix(s, "//"):
			vol, s = "//", "/"+s[2:]
			if strings.HasPrefix(s, "//") {
				return nil, errors.New("not an absolute path")
			}
		case len(s) >= 3 && s[1] == ':' && s[2] == '/' && isLetter(s[0]):
			vol, s = s[:2], s[2:]
		default:
			return nil, errors.New(`not an absolute path: start with a drive (C:\) or a share (\\server\share\)`)
		}
	} else if !strings.HasPrefix(s, "/") {
		return nil, errors.New("not an absolute path")
	}
	clean := path.Clean(s)
	elems := []string{vol}
	if clean != "/" {
		elems = append(elems, strings.Split(clean[1:], "/")...)
	}
	if vol == "//" && len(elems) < 3 {
		return nil, errors.New(`a share path needs \\server\share`)
	}
	return elems, nil
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// matchElems reports whether the path elements name match the pattern
// elements pat; "**" matches any number of elements. It runs in
// O(len(pat) * len(name)).
func matchElems(pat, name []string) bool {
	// ok[j] says whether pat[i:] matches name[j:], for the current i,
	// computed from the last pattern element back.
	ok := make([]bool, len(name)+1)
	ok[len(name)] = true
	for i := len(pat) - 1; i >= 0; i-- {
		next := make([]bool, len(name)+1)
		if pat[i] == "**" {
			// ** matches name[j:k] for any k >= j.
			any := false
			for j := len(name); j >= 0; j-- {
				any = any || ok[j]
				next[j] = any
			}
		} else {
			for j := len(name) - 1; j >= 0; j-- {
				if !ok[j+1] {
					continue
				}
				if i == 0 {
					// The volume: literal.
					next[j] = pat[i] == name[j]
					continue
				}
				m, err := path.Match(pat[i], name[j])
				next[j] = m && err == nil
			}
		}
		ok = next
	}
	return ok[0]
}

// Match reports whether the absolute path name matches one of the
// program patterns. It does not touch the file system.
func (p *Policy) Match(name string) bool {
	if p.any {
		return true
	}
	elems, err := p.split(name)
	if err != nil {
		return false
	}
	for _, pat := range p.programs {
		if matchElems(pat, elems) {
			return true
		}
	}
	return false
}

// Program checks the program a task would run. name is argv[0] resolved
// as the child will be started: absolute, through PATH when it named no
// directory. It returns the path to start: name with its symbolic links
// evaluated (name itself when it does not exist), or a *Denied.
func (p *Policy) Program(name string) (string, error) {
	if p.any {
		return name, nil
	}
	real, err := p.eval(name)
	if err != nil {
		// Nothing there to run (or it cannot be read): judged by its
		// name; starting it reports the real problem.
		if p.Match(name) {
			return name, nil
		}
		return "", &Denied{What: "program " + name, Why: "it matches none of " + p.listPrograms()}
	}
	if p.Match(real) {
		return real, nil
	}
	what := "program " + name
	if !p.same(real, name) {
		what += " (a link to " + real + ")"
	}
	return "", &Denied{What: what, Why: "it matches none of " + p.listPrograms()}
}

// same reports whether two paths are the same for the policy's OS.
func (p *Policy) same(a, b string) bool {
	ea, err1 := p.split(a)
	eb, err2 := p.split(b)
	return err1 == nil && err2 == nil && slices.Equal(ea, eb)
}

// maxListed bounds the patterns a message lists.
const maxListed = 8

func (p *Policy) listPrograms() string {
	if len(p.raw) == 0 {
		return "the agent's --allow patterns: none are given"
	}
	return listFlags("--allow", p.raw)
}

func listFlags(flag string, vals []string) string {
	var b strings.Builder
	for i, v := range vals {
		if i == maxListed {
			fmt.Fprintf(&b, " and %d more", len(vals)-maxListed)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(flag + " " + v)
	}
	return b.String()
}

// Env checks the names of the environment variables a task sets. It
// returns a *Denied for the first (in sorted order) that DeniedEnv covers
// and Config.Env does not allow.
func (p *Policy) Env(names []string) error {
	if p.any {
		return nil
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	for _, n := range sorted {
		if rule, denied := p.deniedEnv(n); denied {
			return &Denied{
				What: "environment variable " + n,
				Why:  fmt.Sprintf("%s can change which program runs (rule %s); allow it with --allow-env %s", n, rule, n),
			}
		}
	}
	return nil
}

func (p *Policy) deniedEnv(name string) (string, bool) {
	f := p.fold(name)
	for _, a := range p.env {
		if ok, _ := path.Match(a, f); ok {
			return "", false
		}
	}
	for _, d := range DeniedEnv {
		fd := p.fold(d)
		if pre, ok := strings.CutSuffix(fd, "*"); ok {
			if strings.HasPrefix(f, pre) {
				return d, true
			}
		} else if f == fd {
			return d, true
		}
	}
	return "", false
}

// Dir checks a task's working directory, given absolute; "" (the agent's
// own) is always allowed. It returns the directory to use: with its
// symbolic links evaluated (as given when it does not exist), or a
// *Denied.
func (p *Policy) Dir(dir string) (string, error) {
	if p.any || dir == "" {
		return dir, nil
	}
	if len(p.dirs) == 0 {
		return "", &Denied{What: "working_dir " + dir, Why: "no --allow-dir is given, so a task must leave working_dir empty (the agent's own directory)"}
	}
	real, err := p.eval(dir)
	if err != nil {
		real = dir
	}
	elems, err := p.split(real)
	if err == nil {
		for _, root := range p.dirs {
			if len(elems) >= len(root) && slices.Equal(elems[:len(root)], root) {
				return real, nil
			}
		}
	}
	what := "working_dir " + dir
	if !p.same(real, dir) {
		what += " (a link to " + real + ")"
	}
	return "", &Denied{What: what, Why: "it is in none of " + listFlags("--allow-dir", p.rawDirs)}
}
