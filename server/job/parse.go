package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MaxSourceSize is the largest job file [Parse] accepts, in bytes.
const MaxSourceSize = 1 << 20

// maxNodes bounds how many YAML nodes one parse walks, so that aliases
// expanding into each other cannot make a small file expensive.
const maxNodes = 1 << 20

// maxInt is the largest value of an integer field. Stores keep these in
// 32-bit columns.
const maxInt = math.MaxInt32

// Values of [Spec.Overlap].
const (
	OverlapForbid = "forbid"
	OverlapQueue  = "queue"
	OverlapAllow  = "allow"
)

// Values of [Task.Trigger].
const (
	TriggerAll = "all"
	TriggerAny = "any"
)

// Values of [Task.OnFailure].
const (
	OnFailureContinue  = "continue"
	OnFailureCancelRun = "cancel_run"
)

var (
	jobFields  = []string{"name", "description", "params", "max_parallel", "overlap", "timeout", "tasks"}
	taskFields = []string{"name", "description", "stage", "needs", "trigger", "when", "runs_on", "run",
		"env", "working_dir", "retries", "retry_delay", "retry_backoff", "retry_on_lost", "timeout",
		"allow_failure", "on_failure", "priority", "for_each", "max_parallel"}
	edgeFields     = []string{"task", "status", "when"}
	selectorFields = []string{"agent", "labels"}
	forEachFields  = []string{"items", "param", "from"}
)

var (
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	labelKeyRE = regexp.MustCompile(`^[A-Za-z0-9._/-]+$`)
	yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): `)
)

// Parse parses and validates a job file (YAML; JSON is YAML). Expressions
// are compiled and type-checked. It returns *[Error] listing every problem
// found, each with its line, task and field.
//
// The returned Spec is normalized: fields with a named default (overlap,
// trigger, edge status, on_failure) hold it explicitly, retry_on_lost true
// is stored as nil and retry_backoff 1 as 0, and empty maps and lists are
// nil. Its [Spec.Canonical] form is therefore the same for files that
// differ only in formatting, comments, key order or spelled-out defaults.
func Parse(src []byte) (*Spec, error) {
	if len(src) > MaxSourceSize {
		return nil, &Error{Errs: []FieldError{{
			Msg: fmt.Sprintf("job file is %d bytes; the limit is %d bytes (1 MiB)", len(src), MaxSourceSize),
		}}}
	}
	s, _, err := parse(src)
	return s, err
}

// Decode reads a canonical spec (as written by [Spec.Canonical] and kept
// by the store) back and validates it again, exactly as [Parse] would.
// Errors carry no line numbers.
func Decode(canonical []byte) (*Spec, error) {
	s, _, err := parse(canonical)
	var e *Error
	if errors.As(err, &e) {
		for i := range e.Errs {
			e.Errs[i].Line = 0
		}
	}
	return s, err
}

// Canonical returns the canonical JSON the store keeps: the JSON encoding
// of s, with maps in key order. A Spec from [Parse] or [Decode] is
// normalized, so identical job files and files differing only in
// formatting, comments, key order or spelled-out defaults give identical
// bytes.
func (s *Spec) Canonical() ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode job spec: %w", err)
	}
	return b, nil
}

// parse parses, normalizes and validates src. It returns the spec, its
// compiled expressions and an *Error when anything is wrong.
func parse(src []byte) (*Spec, *Exprs, error) {
	var errs errorList
	root := decodeYAML(src, &errs)
	if root == nil {
		return nil, nil, errs.err()
	}
	p := &parser{errs: &errs, lines: make(map[string]int), taskNames: make(map[string]int), budget: maxNodes}
	s := p.job(root)
	if p.budget < 0 {
		return nil, nil, errs.err()
	}
	normalize(s)
	v := &validator{spec: s, errs: &errs, lines: p.lines}
	v.validate()
	x := compileExprs(s, &errs, p.lines)
	if err := errs.err(); err != nil {
		return nil, nil, err
	}
	return s, x, nil
}

// decodeYAML reads the single document in src. It reports problems to
// errs and returns nil when there is no usable document.
func decodeYAML(src []byte, errs *errorList) (root *yaml.Node) {
	defer func() {
		// The YAML library is not expected to panic, but a job file comes
		// from outside and must never crash the control plane.
		if r := recover(); r != nil {
			root = nil
			errs.add(0, "", "", "invalid YAML: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(src))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			errs.add(0, "", "", "job file is empty")
			return nil
		}
		addYAMLError(errs, err)
		return nil
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		addYAMLError(errs, err)
		return nil
	default:
		errs.add(next.Line, "", "", "a job file holds one YAML document; found a second one (remove the \"---\" separator)")
		return nil
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		errs.add(0, "", "", "job file is empty")
		return nil
	}
	return doc.Content[0]
}

// addYAMLError reports a YAML syntax error, moving the library's
// "yaml: line N:" prefix into the line number.
func addYAMLError(errs *errorList, err error) {
	msg := err.Error()
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
		// The library numbers lines from 0 in parser (as opposed to
		// scanner) errors.
		if strings.HasPrefix(msg, "did not find expected") || strings.HasPrefix(msg, "found duplicate %") ||
			msg == "found incompatible YAML document" || msg == "found undefined tag handle" {
			line++
		}
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	errs.add(line, "", "", "invalid YAML: %s", msg)
}

// parser walks a YAML node tree into a Spec. It records the line of every
// field it reads in lines, keyed by path, for later checks.
type parser struct {
	errs      *errorList
	lines     map[string]int
	taskNames map[string]int // task name -> line of its first definition
	budget    int
}

// pair is one key/value of a YAML mapping.
type pair struct {
	key  string
	line int
	val  *yaml.Node
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// node follows aliases and charges the node budget. It returns nil once
// the budget is spent.
func (p *parser) node(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode; i++ {
		if i > 100 {
			return nil
		}
		n = n.Alias
	}
	p.budget--
	if p.budget == -1 {
		p.errs.add(0, "", "", "job file is too large once its aliases are expanded (more than %d values)", maxNodes)
	}
	if p.budget < 0 {
		return nil
	}
	return n
}

// describe names the kind of value n holds, for error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!str":
			return "a string"
		case "!!int", "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		case "!!timestamp":
			return "a date"
		default:
			return "a value tagged " + n.ShortTag()
		}
	}
	return "an unsupported value"
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// mapping returns the pairs of the mapping n in order, merging "<<"
// keys. allowed only words the error when n is not a mapping; [parser.fields]
// checks the keys.
func (p *parser) mapping(n *yaml.Node, task, path string, allowed []string) ([]pair, bool) {
	if n = p.node(n); n == nil {
		return nil, false
	}
	if n.Kind != yaml.MappingNode {
		what := "a mapping"
		if allowed != nil {
			what = "a mapping with the fields " + strings.Join(allowed, ", ")
		}
		subject := "must"
		if path == "" {
			subject = "a job file must"
		}
		p.errs.add(n.Line, task, path, "%s be %s, not %s", subject, what, describe(n))
		return nil, false
	}
	seen := make(map[string]int)
	var out []pair
	p.collectPairs(n, task, path, seen, &out, 0)
	return out, true
}

func (p *parser) collectPairs(n *yaml.Node, task, path string, seen map[string]int, out *[]pair, depth int) {
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := p.node(n.Content[i])
		v := n.Content[i+1]
		if k == nil {
			return
		}
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		if k.Kind != yaml.ScalarNode || isNull(k) {
			p.errs.add(k.Line, task, path, "keys must be plain text, not %s", describe(k))
			continue
		}
		key := k.Value
		if first, dup := seen[key]; dup {
			if depth == 0 && first > 0 {
				p.errs.add(k.Line, task, join(path, key), "duplicate key %q (first at line %d)", key, first)
			}
			continue
		}
		if depth == 0 {
			seen[key] = k.Line
		} else {
			seen[key] = 0 // merged keys never override, and are never duplicates
		}
		*out = append(*out, pair{key: key, line: k.Line, val: v})
	}
	// Merge keys ("<<: *defaults") add the keys not given explicitly.
	for _, m := range merges {
		m = p.node(m)
		if m == nil {
			return
		}
		var srcs []*yaml.Node
		switch m.Kind {
		case yaml.MappingNode:
			srcs = []*yaml.Node{m}
		case yaml.SequenceNode:
			srcs = m.Content
		default:
			p.errs.add(m.Line, task, path, "a merge key (<<) must refer to a mapping or a list of mappings")
		}
		for _, src := range srcs {
			src = p.node(src)
			if src == nil {
				return
			}
			if src.Kind != yaml.MappingNode || depth > 20 {
				p.errs.add(src.Line, task, path, "a merge key (<<) must refer to a mapping or a list of mappings")
				continue
			}
			p.collectPairs(src, task, path, seen, out, depth+1)
		}
	}
}

// fields keeps the pairs that are known fields with a value. It reports
// unknown fields. A null value means the field is not given.
func (p *parser) fields(pairs []pair, task, path string, allowed []string) []pair {
	out := pairs[:0:0]
	for _, kv := range pairs {
		if !contains(allowed, kv.key) {
			msg := fmt.Sprintf("unknown field %q", kv.key)
			if s := suggest(kv.key, allowed); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			p.errs.add(kv.line, task, join(path, kv.key), "%s; allowed: %s", msg, strings.Join(allowed, ", "))
			continue
		}
		if vn := p.node(kv.val); vn == nil || isNull(vn) {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// sequence returns the elements of the list n.
func (p *parser) sequence(n *yaml.Node, task, path, hint string) ([]*yaml.Node, bool) {
	if n = p.node(n); n == nil {
		return nil, false
	}
	if n.Kind != yaml.SequenceNode {
		msg := fmt.Sprintf("must be a list, not %s", describe(n))
		if hint != "" {
			msg += "; " + hint
		}
		p.errs.add(n.Line, task, path, "%s", msg)
		return nil, false
	}
	return n.Content, true
}

// text reads a scalar as text: strings as written, and numbers, booleans
// and dates as their text in the file.
func (p *parser) text(n *yaml.Node, task, path string) (string, int, bool) {
	if n = p.node(n); n == nil {
		return "", 0, false
	}
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
			// No program argument, environment value or path can hold
			// a NUL, and nothing else in a job file needs one.
			if strings.IndexByte(n.Value, 0) >= 0 {
				p.errs.add(n.Line, task, path, "must not contain a NUL character (\\0)")
				return "", n.Line, false
			}
			return n.Value, n.Line, true
		case "!!null":
			p.errs.add(n.Line, task, path, "must be a value, not null (write \"\" for an empty string)")
			return "", n.Line, false
		}
	}
	p.errs.add(n.Line, task, path, "must be a string, not %s", describe(n))
	return "", n.Line, false
}

// str reads a string field. Numbers and booleans are taken as their text.
func (p *parser) str(n *yaml.Node, task, path string) (string, bool) {
	s, line, ok := p.text(n, task, path)
	if ok {
		p.lines[path] = line
	}
	return s, ok
}

// expr reads a CEL expression field.
func (p *parser) expr(n *yaml.Node, task, path string) (string, bool) {
	s, ok := p.str(n, task, path)
	if ok && strings.TrimSpace(s) == "" {
		p.errs.add(p.lines[path], task, path, "must not be empty; leave the field out instead")
		return "", false
	}
	return s, ok
}

// integer reads a non-negative whole number.
func (p *parser) integer(n *yaml.Node, task, path string) (int, bool) {
	if n = p.node(n); n == nil {
		return 0, false
	}
	p.lines[path] = n.Line
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		p.errs.add(n.Line, task, path, "must be a whole number, not %s", describe(n))
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		p.errs.add(n.Line, task, path, "must be a whole number between 0 and %d, not %s", maxInt, n.Value)
		return 0, false
	}
	if v < 0 {
		p.errs.add(n.Line, task, path, "must not be negative, got %d", v)
		return 0, false
	}
	if v > maxInt {
		p.errs.add(n.Line, task, path, "must be at most %d, got %d", maxInt, v)
		return 0, false
	}
	return int(v), true
}

// number reads a finite number.
func (p *parser) number(n *yaml.Node, task, path string) (float64, bool) {
	if n = p.node(n); n == nil {
		return 0, false
	}
	p.lines[path] = n.Line
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || (tag != "!!int" && tag != "!!float") {
		p.errs.add(n.Line, task, path, "must be a number, not %s", describe(n))
		return 0, false
	}
	var v float64
	if err := n.Decode(&v); err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		p.errs.add(n.Line, task, path, "must be a finite number, not %s", n.Value)
		return 0, false
	}
	return v, true
}

// boolean reads true or false.
func (p *parser) boolean(n *yaml.Node, task, path string) (bool, bool) {
	if n = p.node(n); n == nil {
		return false, false
	}
	p.lines[path] = n.Line
	var v bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&v) != nil {
		p.errs.add(n.Line, task, path, "must be true or false, not %s", describe(n))
		return false, false
	}
	return v, true
}

// duration reads a Go-style duration greater than zero.
func (p *parser) duration(n *yaml.Node, task, path string) (Duration, bool) {
	if n = p.node(n); n == nil {
		return 0, false
	}
	p.lines[path] = n.Line
	if n.Kind != yaml.ScalarNode {
		p.errs.add(n.Line, task, path, "must be a duration like \"90s\", \"30m\" or \"2h\", not %s", describe(n))
		return 0, false
	}
	if tag := n.ShortTag(); tag == "!!int" || tag == "!!float" {
		p.errs.add(n.Line, task, path, "duration %s needs a unit, like \"%ss\" or \"%sm\"", n.Value, n.Value, n.Value)
		return 0, false
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		p.errs.add(n.Line, task, path, "invalid duration %q: use Go syntax like \"90s\", \"30m\" or \"1h30m\" (units: ms, s, m, h)", n.Value)
		return 0, false
	}
	if d <= 0 {
		p.errs.add(n.Line, task, path, "duration must be greater than zero, got %q", n.Value)
		return 0, false
	}
	return Duration(d), true
}

// enum reads one of a fixed set of words.
func (p *parser) enum(n *yaml.Node, task, path string, allowed ...string) (string, bool) {
	s, ok := p.str(n, task, path)
	if !ok {
		return "", false
	}
	if !contains(allowed, s) {
		p.errs.add(p.lines[path], task, path, "invalid value %q; allowed: %s", s, strings.Join(allowed, ", "))
		return "", false
	}
	return s, true
}

// textMap reads a mapping of names to text values (params, env, labels).
func (p *parser) textMap(n *yaml.Node, task, path string, checkKey func(key string) string) map[string]string {
	pairs, ok := p.mapping(n, task, path, nil)
	if !ok {
		return nil
	}
	p.lines[path] = n.Line
	out := make(map[string]string, len(pairs))
	for _, kv := range pairs {
		kp := join(path, kv.key)
		p.lines[kp] = kv.line
		if msg := checkKey(kv.key); msg != "" {
			p.errs.add(kv.line, task, kp, "%s", msg)
			continue
		}
		v, _, ok := p.text(kv.val, task, kp)
		if !ok {
			continue
		}
		out[kv.key] = v
	}
	return out
}

// job reads the whole file.
func (p *parser) job(n *yaml.Node) *Spec {
	s := &Spec{}
	pairs, ok := p.mapping(n, "", "", jobFields)
	if !ok {
		return s
	}
	pairs = p.fields(pairs, "", "", jobFields)
	var tasks *yaml.Node
	for _, kv := range pairs {
		p.lines[kv.key] = kv.line
		switch kv.key {
		case "name":
			if v, ok := p.str(kv.val, "", "name"); ok {
				if msg := checkName(v); msg != "" {
					p.errs.add(kv.line, "", "name", "%s", msg)
				}
				s.Name = v
			}
		case "description":
			s.Description, _ = p.str(kv.val, "", "description")
		case "params":
			s.Params = p.textMap(kv.val, "", "params", checkName)
		case "max_parallel":
			s.MaxParallel, _ = p.integer(kv.val, "", "max_parallel")
		case "overlap":
			s.Overlap, _ = p.enum(kv.val, "", "overlap", OverlapForbid, OverlapQueue, OverlapAllow)
		case "timeout":
			s.Timeout, _ = p.duration(kv.val, "", "timeout")
		case "tasks":
			tasks = kv.val
		}
	}
	if _, ok := p.lines["name"]; !ok {
		p.errs.add(n.Line, "", "name", "missing: every job needs a name")
	}
	if tasks == nil {
		p.errs.add(n.Line, "", "tasks", "missing: a job needs at least one task")
		return s
	}
	items, ok := p.sequence(tasks, "", "tasks", "write each task as a list item starting with \"- name:\"")
	if !ok {
		return s
	}
	if len(items) == 0 {
		p.errs.add(tasks.Line, "", "tasks", "must list at least one task")
	}
	for i, item := range items {
		if t := p.task(item, i); t != nil {
			s.Tasks = append(s.Tasks, t)
		}
		if p.budget < 0 {
			break
		}
	}
	return s
}

// task reads one task.
func (p *parser) task(n *yaml.Node, i int) *Task {
	path := index("tasks", i)
	// Name the task in every message, also those about keys before its
	// name.
	preName := ""
	if n.Kind == yaml.MappingNode {
		for k := 0; k+1 < len(n.Content); k += 2 {
			key, val := n.Content[k], n.Content[k+1]
			if key.Kind == yaml.ScalarNode && key.Value == "name" && val.Kind == yaml.ScalarNode && val.Value != "" && !isNull(val) {
				preName = val.Value
				path = "tasks[" + preName + "]"
				break
			}
		}
	}
	pairs, ok := p.mapping(n, preName, path, taskFields)
	if !ok {
		return nil
	}
	t := &Task{}
	nameGiven := false
	for _, kv := range pairs {
		if kv.key != "name" {
			continue
		}
		if vn := p.node(kv.val); vn == nil || isNull(vn) {
			break
		}
		nameGiven = true
		name, ok := p.str(kv.val, "", join(path, "name"))
		if !ok {
			break
		}
		if name == "" {
			p.errs.add(kv.line, "", join(path, "name"), "must not be empty")
			break
		}
		t.Name = name
		path = "tasks[" + name + "]" // also when the name came from a merge key
		if msg := checkName(name); msg != "" {
			p.errs.add(kv.line, name, join(path, "name"), "%s", msg)
		}
		if first, dup := p.taskNames[name]; dup {
			p.errs.add(kv.line, name, join(path, "name"), "duplicate task name %q (first at line %d)", name, first)
		} else {
			p.taskNames[name] = kv.line
		}
	}
	task := t.Name
	p.lines[path] = n.Line
	pairs = p.fields(pairs, task, path, taskFields)
	if !nameGiven {
		p.errs.add(n.Line, "", join(path, "name"), "missing: every task needs a name")
	}
	var hasRun bool
	for _, kv := range pairs {
		fp := join(path, kv.key)
		p.lines[fp] = kv.line
		switch kv.key {
		case "name":
		case "description":
			t.Description, _ = p.str(kv.val, task, fp)
		case "stage":
			t.Stage, _ = p.integer(kv.val, task, fp)
		case "needs":
			t.Needs = p.needs(kv.val, task, fp)
		case "trigger":
			t.Trigger, _ = p.enum(kv.val, task, fp, TriggerAll, TriggerAny)
		case "when":
			t.When, _ = p.expr(kv.val, task, fp)
		case "runs_on":
			t.RunsOn = p.selector(kv.val, task, fp)
		case "run":
			hasRun = true
			t.Run = p.run(kv.val, task, fp)
		case "env":
			t.Env = p.textMap(kv.val, task, fp, checkEnvName)
		case "working_dir":
			t.WorkingDir, _ = p.str(kv.val, task, fp)
		case "retries":
			t.Retries, _ = p.integer(kv.val, task, fp)
		case "retry_delay":
			t.RetryDelay, _ = p.duration(kv.val, task, fp)
		case "retry_backoff":
			if v, ok := p.number(kv.val, task, fp); ok {
				if v < 1 {
					p.errs.add(kv.line, task, fp, "must be at least 1 (1 keeps the delay constant, 2 doubles it each retry), got %v", v)
				} else if v > 100 {
					p.errs.add(kv.line, task, fp, "must be at most 100, got %v", v)
				} else {
					t.RetryBackoff = v
				}
			}
		case "retry_on_lost":
			if v, ok := p.boolean(kv.val, task, fp); ok {
				t.RetryOnLost = &v
			}
		case "timeout":
			t.Timeout, _ = p.duration(kv.val, task, fp)
		case "allow_failure":
			t.AllowFailure, _ = p.boolean(kv.val, task, fp)
		case "on_failure":
			t.OnFailure, _ = p.enum(kv.val, task, fp, OnFailureContinue, OnFailureCancelRun)
		case "priority":
			t.Priority, _ = p.integer(kv.val, task, fp)
		case "for_each":
			t.ForEach = p.forEach(kv.val, task, fp)
		case "max_parallel":
			t.MaxParallel, _ = p.integer(kv.val, task, fp)
		}
	}
	if !hasRun {
		p.errs.add(n.Line, task, join(path, "run"), "missing: every task needs a run list (the program and its arguments)")
	}
	if _, ok := p.lines[join(path, "max_parallel")]; ok && t.ForEach == nil {
		if _, given := p.lines[join(path, "for_each")]; !given {
			p.errs.add(p.lines[join(path, "max_parallel")], task, join(path, "max_parallel"),
				"only applies to a for_each task; use the job's max_parallel to bound a run")
		}
	}
	return t
}

// run reads the argv list.
func (p *parser) run(n *yaml.Node, task, path string) []string {
	items, ok := p.sequence(n, task, path, "write the program and its arguments as a list, e.g. [/opt/etl/load.sh, --full]; it is not run through a shell")
	if !ok {
		return nil
	}
	if len(items) == 0 {
		p.errs.add(n.Line, task, path, "must not be empty: give the program to run and its arguments")
		return nil
	}
	argv := make([]string, 0, len(items))
	for i, item := range items {
		ip := index(path, i)
		v, line, ok := p.text(item, task, ip)
		if !ok {
			continue
		}
		p.lines[ip] = line
		if i == 0 && strings.TrimSpace(v) == "" {
			p.errs.add(line, task, ip, "the program to run must not be empty")
		}
		argv = append(argv, v)
	}
	return argv
}

// needs reads the incoming edges.
func (p *parser) needs(n *yaml.Node, task, path string) []Edge {
	items, ok := p.sequence(n, task, path, "e.g. [extract] or [{task: extract, status: failure}]")
	if !ok {
		return nil
	}
	edges := make([]Edge, 0, len(items))
	for i, item := range items {
		ip := index(path, i)
		item = p.node(item)
		if item == nil {
			return edges
		}
		p.lines[ip] = item.Line
		var e Edge
		if item.Kind == yaml.MappingNode {
			pairs, _ := p.mapping(item, task, ip, edgeFields)
			pairs = p.fields(pairs, task, ip, edgeFields)
			for _, kv := range pairs {
				fp := join(ip, kv.key)
				p.lines[fp] = kv.line
				switch kv.key {
				case "task":
					e.Task, _ = p.str(kv.val, task, fp)
				case "status":
					e.Status, _ = p.enum(kv.val, task, fp, StatusSuccess, StatusFailure, StatusCompleted)
				case "when":
					e.When, _ = p.expr(kv.val, task, fp)
				}
			}
			if _, ok := p.lines[join(ip, "task")]; !ok {
				p.errs.add(item.Line, task, join(ip, "task"), "missing: name the upstream task")
			}
		} else {
			name, line, ok := p.text(item, task, ip)
			if !ok {
				continue
			}
			e.Task = name
			p.lines[join(ip, "task")] = line
		}
		edges = append(edges, e)
	}
	return edges
}

// selector reads runs_on.
func (p *parser) selector(n *yaml.Node, task, path string) Selector {
	var sel Selector
	pairs, ok := p.mapping(n, task, path, selectorFields)
	if !ok {
		return sel
	}
	pairs = p.fields(pairs, task, path, selectorFields)
	given := false
	for _, kv := range pairs {
		fp := join(path, kv.key)
		p.lines[fp] = kv.line
		switch kv.key {
		case "agent":
			given = true
			if v, ok := p.str(kv.val, task, fp); ok {
				if msg := checkAgentName(v); msg != "" {
					p.errs.add(kv.line, task, fp, "%s", msg)
				} else {
					sel.Agent = v
				}
			}
		case "labels":
			if ln := p.node(kv.val); ln != nil && (ln.Kind != yaml.MappingNode || len(ln.Content) > 0) {
				given = true
			}
			sel.Labels = p.textMap(kv.val, task, fp, checkLabelKey)
			for k, v := range sel.Labels {
				if v == "" {
					p.errs.add(p.lines[join(fp, k)], task, join(fp, k), "label value must not be empty")
				}
			}
		}
	}
	if !given {
		p.errs.add(p.lines[path], task, path, "must name an agent or labels, e.g. {agent: etl-02} or {labels: {role: ssis}}; leave runs_on out to run on any agent")
	}
	return sel
}

// forEach reads for_each.
func (p *parser) forEach(n *yaml.Node, task, path string) *ForEach {
	pairs, ok := p.mapping(n, task, path, forEachFields)
	if !ok {
		return nil
	}
	pairs = p.fields(pairs, task, path, forEachFields)
	fe := &ForEach{}
	var given []string
	for _, kv := range pairs {
		fp := join(path, kv.key)
		p.lines[fp] = kv.line
		given = append(given, kv.key)
		switch kv.key {
		case "items":
			items, ok := p.sequence(kv.val, task, fp, "e.g. [east, west]")
			if !ok {
				continue
			}
			if len(items) == 0 {
				p.errs.add(kv.line, task, fp, "must not be empty")
			}
			for i, item := range items {
				if v, _, ok := p.text(item, task, index(fp, i)); ok {
					fe.Items = append(fe.Items, v)
				}
			}
		case "param":
			fe.Param, _ = p.str(kv.val, task, fp)
		case "from":
			fe.From, _ = p.expr(kv.val, task, fp)
		}
	}
	if len(given) != 1 {
		msg := "must set exactly one of items, param or from"
		if len(given) > 1 {
			msg += fmt.Sprintf("; found %s", strings.Join(given, " and "))
		}
		p.errs.add(n.Line, task, path, "%s", msg)
	}
	return fe
}

// checkName checks a job or task name.
func checkName(s string) string {
	if s == "" {
		return "must not be empty"
	}
	if len(s) > 128 {
		return fmt.Sprintf("name is %d characters long; the limit is 128", len(s))
	}
	if !isAlnum(s[0]) {
		return fmt.Sprintf("invalid name %q: must start with a letter or digit", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return fmt.Sprintf("invalid name %q: use only letters, digits, '.', '_' and '-'", s)
		}
	}
	return ""
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func checkEnvName(s string) string {
	if !envNameRE.MatchString(s) {
		return fmt.Sprintf("invalid environment variable name %q: use letters, digits and '_', not starting with a digit", s)
	}
	if strings.HasPrefix(strings.ToUpper(s), "BATON_") {
		return fmt.Sprintf("environment variable %q: names starting with BATON_ are reserved for Baton", s)
	}
	return ""
}

func checkLabelKey(s string) string {
	if !labelKeyRE.MatchString(s) {
		return fmt.Sprintf("invalid label key %q: use letters, digits, '.', '_', '/' and '-'", s)
	}
	return ""
}

func checkAgentName(s string) string {
	if s == "" {
		return "agent name must not be empty"
	}
	if len(s) > 253 {
		return fmt.Sprintf("agent name is %d characters long; the limit is 253", len(s))
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return fmt.Sprintf("invalid agent name %q: no spaces or control characters", s)
		}
	}
	return ""
}

// suggest returns the allowed word closest to s, or "" when none is close.
func suggest(s string, allowed []string) string {
	best, bestD := "", 3
	for _, a := range allowed {
		if d := editDistance(s, a); d < bestD {
			best, bestD = a, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// normalize makes defaults explicit (or consistently absent) so that the
// canonical form does not depend on how a file spelled them.
func normalize(s *Spec) {
	if s.Overlap == "" {
		s.Overlap = OverlapForbid
	}
	if len(s.Params) == 0 {
		s.Params = nil
	}
	for _, t := range s.Tasks {
		if t.Trigger == "" {
			t.Trigger = TriggerAll
		}
		if t.OnFailure == "" {
			t.OnFailure = OnFailureContinue
		}
		if len(t.Needs) == 0 {
			t.Needs = nil
		}
		for i := range t.Needs {
			if t.Needs[i].Status == "" {
				t.Needs[i].Status = StatusSuccess
			}
		}
		if len(t.Env) == 0 {
			t.Env = nil
		}
		if len(t.RunsOn.Labels) == 0 {
			t.RunsOn.Labels = nil
		}
		if t.RetryOnLost != nil && *t.RetryOnLost {
			t.RetryOnLost = nil
		}
		if t.RetryBackoff == 1 {
			t.RetryBackoff = 0
		}
	}
}
