package job

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// maxNodes bounds how many YAML nodes one parse walks, so that aliases
// expanding into each other cannot make a small file expensive.
const maxNodes = 1 << 20

// maxExpanded bounds the text one parse reads, aliases expanded: twice
// the largest job file.
const maxExpanded = 2 * MaxSourceSize

// maxInt is the largest value of an integer field. Stores keep these in
// 32-bit columns.
const maxInt = math.MaxInt32

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
	// bytes is what is left of maxExpanded.
	bytes int
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
	if n != nil && n.Kind == yaml.ScalarNode && p.bytes >= 0 {
		// Text read through aliases counts each time: a short file must
		// not expand into a huge job.
		p.bytes -= len(n.Value)
		if p.bytes < 0 {
			p.errs.add(n.Line, "", "", "job file is too large once its aliases are expanded (more than %d MiB of text)", maxExpanded>>20)
		}
	}
	if p.budget < 0 || p.bytes < 0 {
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

// isDigits reports whether s is an optional sign followed by decimal
// digits only.
func isDigits(s string) bool {
	s = strings.TrimLeft(s, "+-")
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// integer reads a non-negative whole number.
func (p *parser) integer(n *yaml.Node, task, path string) (int, bool) {
	if n = p.node(n); n == nil {
		return 0, false
	}
	p.lines[path] = n.Line
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float" && isDigits(n.Value) {
		// A whole number too large for YAML's integers.
		p.errs.add(n.Line, task, path, "must be a whole number between 0 and %d, not %s", maxInt, n.Value)
		return 0, false
	}
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
