package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/common/types/traits"
	"cel.dev/cel-go/ext"
	"cel.dev/cel-go/interpreter"
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

// exprContext says where an expression appears, which decides its result
// type and the variables it may use.
type exprContext int

const (
	ctxWhen exprContext = iota // task or edge when: bool
	ctxFrom                    // for_each.from: list or string
	ctxText                    // ${{ }} placeholder: anything convertible to text
)

var reservedVars = []string{"params", "tasks", "item", "index"}

// celEnv is the one CEL environment every expression compiles in. It is
// immutable and safe for concurrent use.
var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("params", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("tasks", cel.MapType(cel.StringType, cel.MapType(cel.StringType, cel.DynType))),
		cel.Variable("item", cel.DynType),
		cel.Variable("index", cel.IntType),
		ext.Strings(),
		cel.CrossTypeNumericComparisons(true),
		cel.ParserExpressionSizeLimit(MaxExprSize),
	)
})

// CompileExprs compiles and checks every expression of s: task and edge
// when conditions, for_each.from and the ${{ }} placeholders in run, env
// and working_dir. It returns *[Error] when any is invalid. [Parse]
// already does this, so for a spec from Parse or [Decode] it only fails
// if the spec was changed since.
func CompileExprs(s *Spec) (*Exprs, error) {
	var errs errorList
	x := compileExprs(s, &errs, nil)
	if err := errs.err(); err != nil {
		return nil, err
	}
	return x, nil
}

// compiler compiles the expressions of one spec.
type compiler struct {
	env   *cel.Env
	spec  *Spec
	graph *graph
	errs  *errorList
	lines map[string]int
	cache map[string]*compiled
}

func compileExprs(s *Spec, errs *errorList, lines map[string]int) *Exprs {
	env, err := celEnv()
	if err != nil {
		errs.add(0, "", "", "set up expressions: %v", err)
		return nil
	}
	c := &compiler{env: env, spec: s, graph: newGraph(s), errs: errs, lines: lines, cache: make(map[string]*compiled)}
	x := &Exprs{tasks: make(map[string]*taskExprs, len(s.Tasks))}
	for i, t := range s.Tasks {
		if t.Name == "" {
			continue
		}
		if _, dup := x.tasks[t.Name]; dup {
			continue
		}
		x.tasks[t.Name] = c.task(i, t)
	}
	return x
}

// taskScope is the task whose expressions are being checked, with its
// upstream set computed on first use.
type taskScope struct {
	index    int
	name     string
	forEach  bool
	upstream []bool // computed on first use
}

func (c *compiler) task(i int, t *Task) *taskExprs {
	sc := &taskScope{index: i, name: t.Name, forEach: t.ForEach != nil}
	tx := &taskExprs{name: t.Name, forEach: t.ForEach}
	tp := taskPath(t.Name)
	if t.When != "" {
		tx.when = c.compile(sc, tp, "when", t.When, ctxWhen)
	}
	for k, e := range t.Needs {
		var p *program
		if e.When != "" {
			p = c.compile(sc, tp, fmt.Sprintf("needs[%d].when", k), e.When, ctxWhen)
		}
		tx.edges = append(tx.edges, p)
	}
	if t.ForEach != nil && t.ForEach.From != "" {
		tx.from = c.compile(sc, tp, "for_each.from", t.ForEach.From, ctxFrom)
	}
	tx.runSrc = t.Run
	for k, arg := range t.Run {
		tx.run = append(tx.run, c.template(sc, tp, fmt.Sprintf("run[%d]", k), arg))
	}
	for _, k := range sortedKeys(t.Env) {
		tx.envKeys = append(tx.envKeys, k)
		tx.env = append(tx.env, c.template(sc, tp, "env."+k, t.Env[k]))
	}
	tx.dir = c.template(sc, tp, "working_dir", t.WorkingDir)
	return tx
}

func (c *compiler) add(sc *taskScope, tp, field, format string, args ...any) {
	path := tp + "." + field
	line := c.lines[path]
	if line == 0 {
		line = c.lines[tp]
	}
	c.errs.add(line, sc.name, path, format, args...)
}

// template compiles the ${{ }} placeholders in s.
func (c *compiler) template(sc *taskScope, tp, field, s string) template {
	segs, err := splitTemplate(s)
	if err != "" {
		c.add(sc, tp, field, "%s", err)
		return nil
	}
	var out template
	for _, seg := range segs {
		if !seg.expr {
			out = append(out, segment{lit: seg.text})
			continue
		}
		p := c.compile(sc, tp, field, seg.text, ctxText)
		if p == nil {
			continue
		}
		out = append(out, segment{prog: p})
	}
	return out
}

// compile compiles one expression and checks its type and references.
// It reports problems and returns nil when the expression is unusable.
func (c *compiler) compile(sc *taskScope, tp, field, src string, ctx exprContext) *program {
	where := ""
	if ctx == ctxText {
		where = fmt.Sprintf("in ${{ %s }}: ", strings.TrimSpace(src))
	}
	cc := c.cached(src)
	ast, iss := cc.ast, cc.iss
	if iss != nil && iss.Err() != nil {
		for _, e := range iss.Errors() {
			msg := celMessage(e.Message)
			loc := ""
			if l := e.Location; l != nil && l.Line() > 0 {
				if strings.Contains(src, "\n") {
					loc = fmt.Sprintf(" (expression line %d, column %d)", l.Line(), l.Column()+1)
				} else {
					loc = fmt.Sprintf(" (column %d)", l.Column()+1)
				}
			}
			c.add(sc, tp, field, "%sinvalid expression: %s%s", where, msg, loc)
		}
		return nil
	}
	ok := true
	out := ast.OutputType()
	switch ctx {
	case ctxWhen:
		if k := out.Kind(); k != types.BoolKind && k != types.DynKind && k != types.AnyKind {
			c.add(sc, tp, field, "condition must be true or false, but %q gives %s", src, out)
			ok = false
		}
	case ctxFrom:
		if k := out.Kind(); k != types.ListKind && k != types.StringKind && k != types.DynKind && k != types.AnyKind {
			c.add(sc, tp, field, "must give a list, or a string holding a JSON list, but %q gives %s", src, out)
			ok = false
		}
	case ctxText:
		if k := out.Kind(); k == types.TypeKind || k == types.OpaqueKind {
			c.add(sc, tp, field, "%scannot turn %s into text", where, out)
			ok = false
		}
	}
	p := &program{field: field, src: strings.TrimSpace(src)}
	if !c.checkRefs(sc, tp, field, where, ast, ctx, p) {
		ok = false
	}
	if !ok {
		return nil
	}
	if cc.prg == nil && cc.prgErr == nil {
		cc.prg, cc.prgErr = c.env.Program(ast, cel.CostLimit(CostLimit), cel.EvalOptions(cel.OptOptimize))
	}
	if cc.prgErr != nil {
		c.add(sc, tp, field, "%sinvalid expression: %v", where, cc.prgErr)
		return nil
	}
	p.prg = cc.prg
	return p
}

// compiled is the compilation of one expression source, shared by every
// place the same source appears in a spec. What depends on the place
// (type expected, references allowed) is checked per place.
type compiled struct {
	ast    *cel.Ast
	iss    *cel.Issues
	prg    cel.Program // safe for concurrent use; made on first valid use
	prgErr error
}

func (c *compiler) cached(src string) *compiled {
	if cc, ok := c.cache[src]; ok {
		return cc
	}
	ast, iss := c.env.Compile(src)
	cc := &compiled{ast: ast, iss: iss}
	c.cache[src] = cc
	return cc
}

var mismatchedRE = regexp.MustCompile(`mismatched input '(.*?)' expecting (\{[^}]*\}|\S+)`)

// celMessage shortens a CEL compile error for a job file's author.
func celMessage(msg string) string {
	msg = strings.TrimSuffix(msg, " (in container '')")
	msg = mismatchedRE.ReplaceAllStringFunc(msg, func(m string) string {
		tok := mismatchedRE.FindStringSubmatch(m)[1]
		if tok == "<EOF>" {
			return "the expression ends too early"
		}
		return fmt.Sprintf("unexpected '%s'", tok)
	})
	if strings.HasPrefix(msg, "undeclared reference to ") {
		msg += "; the variables are params, tasks, item and index"
	}
	return msg
}

// checkRefs checks the variables an expression uses: tasks it names must
// be upstream of the task, params it names must be declared, and item and
// index exist only in the run, env and working_dir of for-each tasks.
func (c *compiler) checkRefs(sc *taskScope, tp, field, where string, ast *cel.Ast, ctx exprContext, p *program) bool {
	ok := true
	root := celast.NavigateAST(ast.NativeRep())
	nodes := celast.MatchDescendants(root, celast.AllMatcher())
	handled := make(map[int64]bool) // ident nodes read with a constant name
	seenTask := make(map[string]bool)
	seenParam := make(map[string]bool)
	constRef := func(operand celast.Expr, name string) {
		if operand.Kind() != celast.IdentKind {
			return
		}
		switch operand.AsIdent() {
		case "tasks":
			handled[operand.ID()] = true
			if !seenTask[name] {
				seenTask[name] = true
				p.taskRefs = append(p.taskRefs, name)
				if !c.checkTaskRef(sc, tp, field, where, name) {
					ok = false
				}
			}
		case "params":
			handled[operand.ID()] = true
			if _, declared := c.spec.Params[name]; !declared && !seenParam[name] {
				seenParam[name] = true
				msg := fmt.Sprintf("%sunknown param %q; declare it under the job's params", where, name)
				if len(c.spec.Params) > 0 {
					msg += fmt.Sprintf(" (declared: %s)", strings.Join(sortedKeys(c.spec.Params), ", "))
				}
				c.add(sc, tp, field, "%s", msg)
				ok = false
			}
		}
	}
	for _, n := range nodes {
		switch n.Kind() {
		case celast.CallKind:
			call := n.AsCall()
			if call.FunctionName() != operators.Index || len(call.Args()) != 2 {
				continue
			}
			if key := call.Args()[1]; key.Kind() == celast.LiteralKind {
				if s, isStr := key.AsLiteral().(types.String); isStr {
					constRef(call.Args()[0], string(s))
				}
			}
		case celast.SelectKind:
			sel := n.AsSelect()
			constRef(sel.Operand(), sel.FieldName())
		case celast.ComprehensionKind:
			comp := n.AsComprehension()
			for _, v := range []string{comp.IterVar(), comp.IterVar2(), comp.AccuVar()} {
				if contains(reservedVars, v) {
					c.add(sc, tp, field, "%sdo not name a loop variable %q: that name is taken by Baton's variable", where, v)
					ok = false
				}
			}
		}
	}
	itemOK := ctx == ctxText && sc.forEach
	reportedItem := false
	for _, n := range nodes {
		if n.Kind() != celast.IdentKind {
			continue
		}
		switch name := n.AsIdent(); name {
		case "tasks":
			if !handled[n.ID()] {
				p.allTasks = true
			}
		case "item", "index":
			if itemOK || reportedItem {
				continue
			}
			reportedItem = true
			ok = false
			if sc.forEach {
				c.add(sc, tp, field, "%s%s is only available in the run, env and working_dir of a for-each task", where, name)
			} else {
				c.add(sc, tp, field, "%s%s is only available in for-each tasks", where, name)
			}
		}
	}
	return ok
}

// checkTaskRef checks that the task named in an expression is upstream.
func (c *compiler) checkTaskRef(sc *taskScope, tp, field, where, name string) bool {
	j, known := c.graph.index[name]
	if !known {
		msg := fmt.Sprintf("%srefers to unknown task %q", where, name)
		if sug := suggest(name, taskNames(c.spec)); sug != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", sug)
		}
		c.add(sc, tp, field, "%s", msg)
		return false
	}
	if sc.upstream == nil {
		sc.upstream = c.graph.upstream(sc.index)
	}
	if !sc.upstream[j] {
		if j == sc.index {
			c.add(sc, tp, field, "%sa task cannot read its own state or outputs", where)
		} else {
			c.add(sc, tp, field, "%srefers to task %q, which is not upstream of this task; add it to needs", where, name)
		}
		return false
	}
	return true
}

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

// clip shortens a value shown in an error message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
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
