package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/interpreter"
)

// activation resolves the variables of one evaluation.
type activation struct {
	v *Vars
	p *program
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "params":
		if a.v.Params == nil {
			return map[string]string{}, true
		}
		return a.v.Params, true
	case "tasks":
		return a.p.tasksValue(a.v), true
	case "item":
		if n, ok := a.v.Item.(json.Number); ok {
			// An item read back with json.Decoder.UseNumber.
			if v, err := fromJSON(n, 0); err == nil {
				return v, true
			}
		}
		return a.v.Item, true
	case "index":
		return int64(a.v.Index), true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

// tasksValue builds the tasks variable: only the referenced tasks unless
// the expression indexes tasks dynamically.
func (p *program) tasksValue(v *Vars) map[string]any {
	conv := func(tv TaskVars) map[string]any {
		out := tv.Outputs
		if out == nil {
			out = map[string]string{}
		}
		return map[string]any{"state": tv.State, "outputs": out}
	}
	if p.allTasks {
		m := make(map[string]any, len(v.Tasks))
		for name, tv := range v.Tasks {
			m[name] = conv(tv)
		}
		return m
	}
	m := make(map[string]any, len(p.taskRefs))
	for _, name := range p.taskRefs {
		if tv, ok := v.Tasks[name]; ok {
			m[name] = conv(tv)
		}
	}
	return m
}

// eval runs p against v.
func (p *program) eval(v *Vars) (val ref.Val, err error) {
	if v == nil {
		v = &Vars{}
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("expression failed: %v", r)
		}
	}()
	out, _, err := p.prg.Eval(&activation{v: v, p: p})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (x *Exprs) task(name string) (*taskExprs, error) {
	if x == nil {
		return nil, errors.New("no compiled expressions")
	}
	tx, ok := x.tasks[name]
	if !ok {
		return nil, fmt.Errorf("unknown task %q", name)
	}
	return tx, nil
}

func evalError(task string, p *program, err error) error {
	return &EvalError{Task: task, Field: p.field, Expr: p.src, Err: err}
}

// evalBool evaluates a condition.
func evalBool(task string, p *program, v *Vars) (bool, error) {
	if p == nil {
		return true, nil
	}
	out, err := p.eval(v)
	if err != nil {
		return false, evalError(task, p, err)
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, evalError(task, p, fmt.Errorf("condition gave %s %s, not true or false", out.Type().TypeName(), clip(fmt.Sprint(out.Value()))))
	}
	return bool(b), nil
}

// TaskWhen evaluates the task's own when condition. It returns true when
// the task has none, and an *[EvalError] when evaluation fails.
func (x *Exprs) TaskWhen(task string, v *Vars) (bool, error) {
	tx, err := x.task(task)
	if err != nil {
		return false, err
	}
	return evalBool(task, tx.when, v)
}

// EdgeWhen evaluates the when condition of edge number edge (its index in
// Task.Needs). It returns true when the edge has none, and an *[EvalError]
// when evaluation fails.
func (x *Exprs) EdgeWhen(task string, edge int, v *Vars) (bool, error) {
	tx, err := x.task(task)
	if err != nil {
		return false, err
	}
	if edge < 0 || edge >= len(tx.edges) {
		return false, fmt.Errorf("task %q has no edge %d", task, edge)
	}
	return evalBool(task, tx.edges[edge], v)
}

// ForEachItems returns the items of a for-each task: the static items,
// the param's value parsed as a JSON list (or, if it does not start with
// "[", split on commas with blanks trimmed and empty pieces dropped), or
// the from expression's list (a string result is parsed as a JSON list).
// Each item is returned both as the value item binds to and as its text
// form (BATON_ITEM). It fails for a task without for_each, for a list
// longer than [MaxItems], and with an *[EvalError] when the list cannot be
// computed.
func (x *Exprs) ForEachItems(task string, v *Vars) ([]Item, error) {
	tx, err := x.task(task)
	if err != nil {
		return nil, err
	}
	fe := tx.forEach
	if fe == nil {
		return nil, fmt.Errorf("task %q has no for_each", task)
	}
	if v == nil {
		v = &Vars{}
	}
	var items []Item
	switch {
	case len(fe.Items) > 0:
		items = make([]Item, len(fe.Items))
		for i, s := range fe.Items {
			items[i] = Item{Value: s, Text: s}
		}
	case fe.Param != "":
		val, ok := v.Params[fe.Param]
		if !ok {
			return nil, &EvalError{Task: task, Field: "for_each.param", Expr: fe.Param, Err: fmt.Errorf("param %q has no value", fe.Param)}
		}
		items, err = paramItems(val)
		if err != nil {
			return nil, &EvalError{Task: task, Field: "for_each.param", Expr: fe.Param, Err: err}
		}
	case tx.from != nil:
		out, err := tx.from.eval(v)
		if err != nil {
			return nil, evalError(task, tx.from, err)
		}
		items, err = valueItems(out)
		if err != nil {
			return nil, evalError(task, tx.from, err)
		}
	}
	if len(items) > MaxItems {
		return nil, fmt.Errorf("task %q: for_each gives %d items; the limit is %d", task, len(items), MaxItems)
	}
	return items, nil
}

// valueItems turns the result of a from expression into items.
func valueItems(out ref.Val) ([]Item, error) {
	if s, ok := out.(types.String); ok {
		return jsonItems(string(s))
	}
	if _, ok := out.(traits.Lister); !ok {
		return nil, fmt.Errorf("must give a list or a string holding a JSON list, got %s", out.Type().TypeName())
	}
	native, err := toNative(out, 0)
	if err != nil {
		return nil, err
	}
	list, _ := native.([]any)
	items := make([]Item, 0, len(list))
	for _, el := range list {
		text, err := textOf(el)
		if err != nil {
			return nil, err
		}
		items = append(items, Item{Value: el, Text: text})
	}
	return items, nil
}

// Expand substitutes the ${{ }} placeholders in the task's run, env and
// working_dir and returns the results. Each placeholder's value becomes
// part of exactly one argv element or env value: nothing passes through a
// shell. It fails with an *[EvalError] when a placeholder cannot be
// evaluated, or when the program to run expands to an empty string.
func (x *Exprs) Expand(task string, v *Vars) (argv []string, env map[string]string, dir string, err error) {
	tx, err := x.task(task)
	if err != nil {
		return nil, nil, "", err
	}
	argv = make([]string, len(tx.run))
	for i, t := range tx.run {
		if argv[i], err = t.expand(task, v); err != nil {
			return nil, nil, "", err
		}
	}
	if len(argv) > 0 && strings.TrimSpace(argv[0]) == "" {
		return nil, nil, "", &EvalError{Task: task, Field: "run[0]", Expr: tx.runSrc[0], Err: errors.New("the program to run expands to an empty string")}
	}
	if len(tx.env) > 0 {
		env = make(map[string]string, len(tx.env))
		for i, t := range tx.env {
			if env[tx.envKeys[i]], err = t.expand(task, v); err != nil {
				return nil, nil, "", err
			}
		}
	}
	if dir, err = tx.dir.expand(task, v); err != nil {
		return nil, nil, "", err
	}
	return argv, env, dir, nil
}

// Secrets returns the task's secret references: env name to secret name
// (env values written as secret:NAME), nil when it has none. Expand
// leaves these names out of env: the agent resolves them itself, and the
// control plane never has the values.
func (x *Exprs) Secrets(task string) map[string]string {
	tx, err := x.task(task)
	if err != nil || len(tx.secrets) == 0 {
		return nil
	}
	return maps.Clone(tx.secrets)
}

// clip shortens a value shown in an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
