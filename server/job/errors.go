package job

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// FieldError is one problem found in a job file.
type FieldError struct {
	// Line is the 1-based line in the source, 0 when unknown (for example
	// when a stored spec is decoded).
	Line int
	// Task is the name of the task at fault, "" for job-level fields.
	Task string
	// Path is the full path of the field at fault, for example
	// "tasks[count-rows].needs[0].task" or "overlap".
	Path string
	// Msg says what is wrong.
	Msg string
}

// String formats e the way [Error.Error] prints each problem:
//
//	line 14: task "count-rows": needs[0].task: unknown task "cout-rows"
//
// The task's own prefix ("tasks[count-rows].") is left out of the path
// when the task is named.
func (e FieldError) String() string {
	var b strings.Builder
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	path := e.Path
	if e.Task != "" {
		fmt.Fprintf(&b, "task %q: ", e.Task)
		prefix := "tasks[" + e.Task + "]"
		if rest, ok := strings.CutPrefix(path, prefix); ok {
			path = strings.TrimPrefix(rest, ".")
		}
	}
	if path != "" {
		b.WriteString(path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Error is returned by [Parse], [Decode] and [CompileExprs] when a job file
// is invalid. It lists every problem found, ordered by line.
type Error struct {
	Errs []FieldError
}

// Error returns one line per problem.
func (e *Error) Error() string {
	lines := make([]string, len(e.Errs))
	for i, fe := range e.Errs {
		lines[i] = fe.String()
	}
	return strings.Join(lines, "\n")
}

// errorList collects problems while a job file is checked.
type errorList struct {
	errs []FieldError
}

func (l *errorList) add(line int, task, path, format string, args ...any) {
	l.errs = append(l.errs, FieldError{Line: line, Task: task, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// err returns the collected problems as an *Error sorted by line (problems
// without a line first, in the order found), or nil when there are none.
func (l *errorList) err() error {
	if len(l.errs) == 0 {
		return nil
	}
	errs := slices.Clone(l.errs)
	slices.SortStableFunc(errs, func(a, b FieldError) int { return cmp.Compare(a.Line, b.Line) })
	return &Error{Errs: errs}
}
