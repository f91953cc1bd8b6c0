package job

import (
	"fmt"
	"slices"

	"cel.dev/cel-go/cel"
)

// Limits on expressions.
const (
	// CostLimit is the CEL runtime cost one evaluation may spend before it
	// is stopped with an error. A comparison costs about 1, string work
	// about 1 per 10 bytes.
	CostLimit = 1_000_000
	// MaxExprSize is the longest expression accepted, in characters.
	MaxExprSize = 16 << 10
	// MaxItems is the most items a for-each task may loop over in one run.
	MaxItems = 100_000
)

// Vars is what an expression sees at run time.
type Vars struct {
	// Params are the run's parameter values (params in expressions).
	Params map[string]string
	// Tasks holds the state and outputs of upstream tasks, by name
	// (tasks in expressions). An expression reading a task missing from
	// Tasks fails with "no such key".
	Tasks map[string]TaskVars
	// Item is the for-each item (item in expressions): nil for a plain
	// task, else a string or, for items from a JSON list, the decoded JSON
	// value (string, int64, float64, bool, nil, []any or map[string]any).
	Item any
	// Index is the item's 0-based position in the list (index in
	// expressions).
	Index int
}

// TaskVars is what an expression sees of one upstream task.
type TaskVars struct {
	// State is the task's state: "succeeded", "failed", "skipped" and so
	// on (tasks.NAME.state).
	State string
	// Outputs are the name=value lines the task wrote to $BATON_OUTPUT
	// (tasks.NAME.outputs).
	Outputs map[string]string
}

// Item is one item of a for-each task.
type Item struct {
	// Value is what item binds to in expressions.
	Value any
	// Text is the item as text, passed to the child as BATON_ITEM: a
	// string as is, anything else as JSON.
	Text string
}

// EvalError is an expression that failed at run time. The engine fails
// the task instance with its message.
type EvalError struct {
	// Task is the task whose expression failed.
	Task string
	// Field is the field holding the expression, for example "when",
	// "needs[0].when", "for_each.from", "run[2]", "env.LOAD_DATE" or
	// "working_dir".
	Field string
	// Expr is the expression's source.
	Expr string
	// Err is what went wrong.
	Err error
}

// Error returns a message naming the task, field and expression.
func (e *EvalError) Error() string {
	return fmt.Sprintf("task %q: %s: %s: %v", e.Task, e.Field, e.Expr, e.Err)
}

// Unwrap returns the underlying error.
func (e *EvalError) Unwrap() error { return e.Err }

// Exprs holds a Spec's compiled expressions. It is safe for concurrent
// use.
type Exprs struct {
	tasks map[string]*taskExprs
}

// taskExprs are the compiled expressions of one task.
type taskExprs struct {
	name    string
	forEach *ForEach
	when    *program
	edges   []*program // by index in Task.Needs; nil when an edge has no when
	from    *program
	run     []template
	runSrc  []string
	envKeys []string
	env     []template // parallel to envKeys
	// secrets maps env names to the secrets they take (secret:NAME
	// values, which are not templates and not in envKeys).
	secrets map[string]string
	dir     template
}

// program is one compiled expression.
type program struct {
	field string
	src   string
	prg   cel.Program
	// taskRefs are the task names referenced with constant names. When
	// allTasks is set the expression also indexes tasks dynamically and
	// sees every task in Vars.
	taskRefs []string
	allTasks bool
}

// TaskReads says which tasks' state and outputs the expressions of s can
// read: the names referenced with constant names, or all when any
// expression indexes tasks dynamically. Code that keeps Vars.Tasks up to
// date need only keep these entries.
func (x *Exprs) TaskReads() (names []string, all bool) {
	if x == nil {
		return nil, false
	}
	seen := map[string]bool{}
	add := func(p *program) {
		if p == nil {
			return
		}
		if p.allTasks {
			all = true
		}
		for _, n := range p.taskRefs {
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	addTemplate := func(t template) {
		for _, seg := range t {
			add(seg.prog)
		}
	}
	for _, tx := range x.tasks {
		add(tx.when)
		for _, e := range tx.edges {
			add(e)
		}
		add(tx.from)
		for _, t := range tx.run {
			addTemplate(t)
		}
		for _, t := range tx.env {
			addTemplate(t)
		}
		addTemplate(tx.dir)
	}
	slices.Sort(names)
	return names, all
}
