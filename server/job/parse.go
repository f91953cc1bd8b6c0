package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
)

// MaxSourceSize is the largest job file [Parse] accepts, in bytes.
const MaxSourceSize = 1 << 20

// MaxArgBytes bounds one argument of a task's run and one NAME=value entry
// of its env: Linux refuses a longer one when the child starts
// (MAX_ARG_STRLEN), so the job is refused when it is applied instead.
const MaxArgBytes = 128<<10 - 1

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
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	labelKeyRE = regexp.MustCompile(`^[A-Za-z0-9._/-]+$`)
	// secretNameRE: a file name in the agent's secrets directory, and the
	// end of a BATON_SECRET_ variable; never "." or "..", no separator.
	secretNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	yamlLineRE   = regexp.MustCompile(`^yaml: line (\d+): `)
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
	p := &parser{errs: &errs, lines: make(map[string]int), taskNames: make(map[string]int), budget: maxNodes, bytes: maxExpanded}
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
