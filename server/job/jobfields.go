package job

import (
	"cmp"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
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
			for name, val := range t.Env {
				if len(name)+1+len(val) > MaxArgBytes {
					p.errs.add(kv.line, task, join(fp, name), "is %d bytes; one environment entry (NAME=value) may be at most %d (128 KiB, Linux's limit): pass large values in a file",
						len(name)+1+len(val), MaxArgBytes)
					delete(t.Env, name)
					continue
				}
				if msg := checkSecretRef(val); msg != "" {
					p.errs.add(cmp.Or(p.lines[join(fp, name)], kv.line), task, join(fp, name), "%s", msg)
					delete(t.Env, name)
				}
			}
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
		if len(v) > MaxArgBytes {
			p.errs.add(line, task, ip, "is %d bytes; one argument may be at most %d (128 KiB, Linux's limit; a whole Windows command line may be 32,767 characters): pass large values in a file",
				len(v), MaxArgBytes)
			continue
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

// SecretPrefix starts an env value that names a secret: "secret:NAME".
const SecretPrefix = "secret:"

// MaxSecretName is the longest secret name.
const MaxSecretName = 128

// SecretRef returns the secret an env value names, when it is a secret
// reference: exactly "secret:" and a valid name, written in the job file
// (placeholders never make one).
func SecretRef(val string) (string, bool) {
	name, ok := strings.CutPrefix(val, SecretPrefix)
	if !ok || checkSecretRef(val) != "" {
		return "", false
	}
	return name, true
}

// checkSecretRef checks an env value that starts with "secret:".
func checkSecretRef(val string) string {
	name, ok := strings.CutPrefix(val, SecretPrefix)
	if !ok {
		return ""
	}
	if strings.Contains(name, "${{") {
		return fmt.Sprintf("%q: a secret reference cannot hold placeholders: write the secret's name out, so that no run param can choose which secret a task reads (for a literal value starting with %q, write ${{ %q }})",
			clip(val), SecretPrefix, val)
	}
	if !secretNameRE.MatchString(name) {
		return fmt.Sprintf("invalid secret name %q in %q: use 1 to %d letters, digits, '.', '_' and '-', starting with a letter or digit",
			clip(name), clip(val), MaxSecretName)
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
