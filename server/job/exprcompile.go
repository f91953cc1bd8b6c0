package job

import (
	"fmt"
	"regexp"
	"strings"
	"sync"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/ext"
)

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
		// A secret reference is recognised in the job file's text only,
		// before any placeholder is expanded: a value a placeholder
		// produces is always literal, so a run param cannot make a task
		// read a secret.
		if name, ok := SecretRef(t.Env[k]); ok {
			if tx.secrets == nil {
				tx.secrets = make(map[string]string)
			}
			tx.secrets[k] = name
			continue
		}
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
