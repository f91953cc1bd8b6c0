package job

import (
	"fmt"
	"slices"
	"strings"
)

// validator checks what needs the whole spec: edges, stages, cycles and
// parameters.
type validator struct {
	spec  *Spec
	errs  *errorList
	lines map[string]int
}

func taskPath(task string) string { return "tasks[" + task + "]" }

func (v *validator) add(path, task, format string, args ...any) {
	v.errs.add(v.lines[path], task, path, format, args...)
}

func (v *validator) validate() {
	s := v.spec
	g := newGraph(s)
	v.checkParams()
	for i, t := range s.Tasks {
		if t.Name == "" {
			continue
		}
		tp := taskPath(t.Name)
		stageDeps := make(map[int]bool)
		for _, d := range g.stageDeps(i) {
			stageDeps[d] = true
		}
		seen := make(map[string]int)
		for k, e := range t.Needs {
			ep := fmt.Sprintf("%s.needs[%d]", tp, k)
			fp := ep + ".task"
			j, known := g.index[e.Task]
			switch {
			case e.Task == "":
				v.add(fp, t.Name, "must name a task")
			case e.Task == t.Name:
				v.add(fp, t.Name, "a task cannot need itself")
			case !known:
				msg := fmt.Sprintf("unknown task %q", e.Task)
				if sug := suggest(e.Task, taskNames(s)); sug != "" && sug != t.Name {
					msg += fmt.Sprintf(" (did you mean %q?)", sug)
				}
				v.add(fp, t.Name, "%s", msg)
			default:
				if first, dup := seen[e.Task]; dup {
					v.add(fp, t.Name, "task %q is already listed in needs[%d]; combine the two edges", e.Task, first)
				} else {
					seen[e.Task] = k
				}
				// A failed stage member holds the next stage back unless
				// it may fail, so this edge could never be satisfied.
				if e.Status == StatusFailure && stageDeps[j] && !s.Tasks[j].AllowFailure {
					v.add(ep, t.Name, "status failure can never be met: %q is in stage %d, and this task (stage %d) runs only once stage %d has no failures; set allow_failure on %q or move this task out of the stages",
						e.Task, s.Tasks[j].Stage, t.Stage, s.Tasks[j].Stage, e.Task)
				}
			}
		}
		if t.Trigger == TriggerAny && len(t.Needs) == 0 {
			v.add(tp+".trigger", t.Name, "trigger any needs a needs list: it decides how the needs edges combine")
		}
		if fe := t.ForEach; fe != nil && fe.Param != "" {
			if _, ok := s.Params[fe.Param]; !ok {
				msg := fmt.Sprintf("unknown param %q; declare it under the job's params", fe.Param)
				if len(s.Params) > 0 {
					msg += fmt.Sprintf(" (declared: %s)", strings.Join(sortedKeys(s.Params), ", "))
				}
				v.add(tp+".for_each.param", t.Name, "%s", msg)
			}
		}
	}
	for _, cyc := range g.cycles() {
		v.reportCycle(g, cyc)
	}
}

// maxCycleShown bounds the tasks a cycle's error names.
const maxCycleShown = 8

// reportCycle reports one dependency cycle at its first task.
func (v *validator) reportCycle(g *graph, cyc []int) {
	var names []string
	var notes []string
	for k, node := range cyc {
		if node >= g.n {
			continue // a stage barrier: shown as an edge between tasks
		}
		names = append(names, g.spec.Tasks[node].Name)
		if next := cyc[(k+1)%len(cyc)]; next >= g.n {
			after := cyc[(k+2)%len(cyc)]
			notes = append(notes, fmt.Sprintf("%s -> %s comes from stage order (stage %d runs after stage %d)",
				g.spec.Tasks[node].Name, g.spec.Tasks[after].Name, g.spec.Tasks[node].Stage, g.stageOf[next]))
		}
	}
	names = append(names, names[0])
	first := g.spec.Tasks[cyc[0]]
	tp := taskPath(first.Name)
	path := tp + ".needs"
	if _, ok := v.lines[path]; !ok {
		path = tp + ".stage"
	}
	what := "dependency cycle"
	if tasks := len(names) - 1; tasks > maxCycleShown {
		// A long cycle: its start and end, and how long it is.
		names = append(append(names[:maxCycleShown/2:maxCycleShown/2], fmt.Sprintf("... %d more ...", tasks-maxCycleShown+1)),
			names[len(names)-maxCycleShown/2:]...)
		what = fmt.Sprintf("dependency cycle of %d tasks", tasks)
	}
	msg := fmt.Sprintf("%s: %s (x -> y means x needs y)", what, strings.Join(names, " -> "))
	if len(notes) > maxCycleShown/2 {
		notes = append(notes[:maxCycleShown/2:maxCycleShown/2], fmt.Sprintf("%d more stage orders", len(notes)-maxCycleShown/2))
	}
	if len(notes) > 0 {
		msg += "; " + strings.Join(notes, "; ")
	}
	v.add(path, first.Name, "%s", msg)
}

// checkParams rejects parameter names that collide once turned into
// BATON_PARAM_ environment variables.
func (v *validator) checkParams() {
	byEnv := make(map[string]string)
	for _, name := range sortedKeys(v.spec.Params) {
		env := ParamEnvName(name)
		if other, dup := byEnv[env]; dup {
			v.add("params."+name, "", "params %q and %q both become the environment variable %s; rename one", other, name, env)
			continue
		}
		byEnv[env] = name
	}
}

func taskNames(s *Spec) []string {
	names := make([]string, 0, len(s.Tasks))
	for _, t := range s.Tasks {
		names = append(names, t.Name)
	}
	return names
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ParamEnvName returns the environment variable a run parameter is passed
// to every child as: BATON_PARAM_ followed by the name upper-cased, with
// every character other than A-Z, 0-9 and _ replaced by _.
func ParamEnvName(param string) string {
	b := []byte("BATON_PARAM_" + strings.ToUpper(param))
	for i := len("BATON_PARAM_"); i < len(b); i++ {
		if c := b[i]; !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// ParamEnv returns the BATON_PARAM_<NAME> environment of a run with the
// given parameter values.
func ParamEnv(params map[string]string) map[string]string {
	env := make(map[string]string, len(params))
	for k, v := range params {
		env[ParamEnvName(k)] = v
	}
	return env
}
