package job

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wantErr is one problem a test expects Parse to report.
type wantErr struct {
	line int
	task string
	path string
	msg  string // a substring of FieldError.Msg
}

func mustParse(t *testing.T, src string) *Spec {
	t.Helper()
	s, err := Parse([]byte(src))
	if err != nil {
		t.Fatalf("Parse() error:\n%v\nsource:\n%s", err, src)
	}
	return s
}

func parseErrors(t *testing.T, src string) *Error {
	t.Helper()
	s, err := Parse([]byte(src))
	if err == nil {
		t.Fatalf("Parse() = %+v, want an error\nsource:\n%s", s, src)
	}
	if s != nil {
		t.Errorf("Parse() returned a spec with an error")
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("Parse() error is %T, want *Error: %v", err, err)
	}
	return e
}

func checkErrors(t *testing.T, e *Error, want []wantErr) {
	t.Helper()
	for _, w := range want {
		found := false
		for _, fe := range e.Errs {
			if fe.Line == w.line && fe.Task == w.task && fe.Path == w.path && strings.Contains(fe.Msg, w.msg) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no error {line %d, task %q, path %q, msg ~ %q}; got:\n%s", w.line, w.task, w.path, w.msg, dumpErrs(e))
		}
	}
	for _, fe := range e.Errs {
		if fe.Msg == "" {
			t.Errorf("error without a message: %+v", fe)
		}
	}
}

func dumpErrs(e *Error) string {
	var b strings.Builder
	for _, fe := range e.Errs {
		fmt.Fprintf(&b, "  {line %d, task %q, path %q, msg %q}\n", fe.Line, fe.Task, fe.Path, fe.Msg)
	}
	return b.String()
}

// header is a valid job preamble; the tasks follow at line 3.
const header = "name: j\ntasks:\n"

func TestParseInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		want []wantErr
	}{
		{
			name: "unknown job field",
			src:  "name: j\nmax_paralel: 3\ntasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{2, "", "max_paralel", `unknown field "max_paralel" (did you mean "max_parallel"?); allowed: name, description, params`}},
		},
		{
			name: "unknown task field",
			src:  header + "  - name: count-rows\n    run: [x]\n    retrys: 3\n",
			want: []wantErr{{5, "count-rows", "tasks[count-rows].retrys", `unknown field "retrys" (did you mean "retries"?)`}},
		},
		{
			name: "unknown task field before the name",
			src:  header + "  - comand: [x]\n    name: a\n    run: [x]\n",
			want: []wantErr{{3, "a", "tasks[a].comand", `unknown field "comand"`}},
		},
		{
			name: "unknown edge field",
			src:  header + "  - name: a\n    run: [x]\n  - name: b\n    run: [x]\n    needs: [{task: a, state: failure}]\n",
			want: []wantErr{{7, "b", "tasks[b].needs[0].state", `unknown field "state" (did you mean "status"?); allowed: task, status, when`}},
		},
		{
			name: "unknown runs_on field",
			src:  header + "  - name: a\n    run: [x]\n    runs_on: {host: etl-02}\n",
			want: []wantErr{{5, "a", "tasks[a].runs_on.host", `unknown field "host"; allowed: agent, labels`}},
		},
		{
			name: "unknown for_each field",
			src:  header + "  - name: a\n    run: [x]\n    for_each: {list: [1, 2]}\n",
			want: []wantErr{
				{5, "a", "tasks[a].for_each.list", `unknown field "list"; allowed: items, param, from`},
				{5, "a", "tasks[a].for_each", "must set exactly one of items, param or from"},
			},
		},
		{
			name: "missing job name",
			src:  "tasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{1, "", "name", "missing: every job needs a name"}},
		},
		{
			name: "null job name",
			src:  "name:\ntasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{1, "", "name", "missing"}},
		},
		{
			name: "missing tasks",
			src:  "name: j\n",
			want: []wantErr{{1, "", "tasks", "missing: a job needs at least one task"}},
		},
		{
			name: "empty task list",
			src:  "name: j\ntasks: []\n",
			want: []wantErr{{2, "", "tasks", "must list at least one task"}},
		},
		{
			name: "tasks is a mapping",
			src:  "name: j\ntasks:\n  a:\n    run: [x]\n",
			want: []wantErr{{3, "", "tasks", `must be a list, not a mapping; write each task as a list item starting with "- name:"`}},
		},
		{
			name: "missing task name",
			src:  header + "  - run: [x]\n",
			want: []wantErr{{3, "", "tasks[0].name", "missing: every task needs a name"}},
		},
		{
			name: "missing run",
			src:  header + "  - name: a\n    retries: 1\n",
			want: []wantErr{{3, "a", "tasks[a].run", "missing: every task needs a run list"}},
		},
		{
			name: "empty run",
			src:  header + "  - name: a\n    run: []\n",
			want: []wantErr{{4, "a", "tasks[a].run", "must not be empty"}},
		},
		{
			name: "empty program",
			src:  header + "  - name: a\n    run: ['', arg]\n",
			want: []wantErr{{4, "a", "tasks[a].run[0]", "the program to run must not be empty"}},
		},
		{
			name: "run is a string",
			src:  header + "  - name: a\n    run: /opt/etl/load.sh --full\n",
			want: []wantErr{{4, "a", "tasks[a].run", "must be a list, not a string; write the program and its arguments as a list"}},
		},
		{
			name: "null argument",
			src:  header + "  - name: a\n    run: [x, ~]\n",
			want: []wantErr{{4, "a", "tasks[a].run[1]", `must be a value, not null (write "" for an empty string)`}},
		},
		{
			name: "NUL in an argument",
			src:  header + "  - name: a\n    run: [x, \"a\\0b\"]\n",
			want: []wantErr{{4, "a", "tasks[a].run[1]", "must not contain a NUL character"}},
		},
		{
			name: "duplicate task names",
			src:  header + "  - name: a\n    run: [x]\n  - name: a\n    run: [y]\n",
			want: []wantErr{{5, "a", "tasks[a].name", `duplicate task name "a" (first at line 3)`}},
		},
		{
			name: "unknown task in needs",
			src: header + "  - name: count-rows\n    run: [x]\n  - name: notify\n    run: [x]\n" +
				"    needs: [cout-rows]\n",
			want: []wantErr{{7, "notify", "tasks[notify].needs[0].task", `unknown task "cout-rows" (did you mean "count-rows"?)`}},
		},
		{
			name: "self need",
			src:  header + "  - name: a\n    run: [x]\n    needs: [{task: a}]\n",
			want: []wantErr{{5, "a", "tasks[a].needs[0].task", "a task cannot need itself"}},
		},
		{
			name: "duplicate edge",
			src:  header + "  - name: a\n    run: [x]\n  - name: b\n    run: [x]\n    needs:\n      - a\n      - {task: a, status: failure}\n",
			want: []wantErr{{9, "b", "tasks[b].needs[1].task", `task "a" is already listed in needs[0]`}},
		},
		{
			name: "cycle",
			src: header + "  - name: a\n    needs: [c]\n    run: [x]\n  - name: b\n    needs: [a]\n    run: [x]\n" +
				"  - name: c\n    needs: [b]\n    run: [x]\n",
			want: []wantErr{{4, "a", "tasks[a].needs", "dependency cycle: a -> c -> b -> a"}},
		},
		{
			name: "cycle through stage order",
			src: header + "  - name: load\n    stage: 1\n    needs: [report]\n    run: [x]\n" +
				"  - name: report\n    stage: 2\n    run: [x]\n",
			want: []wantErr{{5, "load", "tasks[load].needs", "dependency cycle: load -> report -> load (x -> y means x needs y); report -> load comes from stage order (stage 2 runs after stage 1)"}},
		},
		{
			name: "bad edge status",
			src:  header + "  - name: a\n    run: [x]\n  - name: b\n    run: [x]\n    needs:\n      - task: a\n        status: failed\n",
			want: []wantErr{{9, "b", "tasks[b].needs[0].status", `invalid value "failed"; allowed: success, failure, completed`}},
		},
		{
			name: "edge without task",
			src:  header + "  - name: a\n    run: [x]\n    needs: [{status: failure}]\n",
			want: []wantErr{{5, "a", "tasks[a].needs[0].task", "missing: name the upstream task"}},
		},
		{
			name: "bad trigger",
			src:  header + "  - name: a\n    run: [x]\n    trigger: or\n",
			want: []wantErr{{5, "a", "tasks[a].trigger", `invalid value "or"; allowed: all, any`}},
		},
		{
			name: "trigger any without needs",
			src:  header + "  - name: a\n    run: [x]\n    trigger: any\n",
			want: []wantErr{{5, "a", "tasks[a].trigger", "trigger any needs a needs list"}},
		},
		{
			name: "bad overlap",
			src:  "name: j\noverlap: skip\ntasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{2, "", "overlap", `invalid value "skip"; allowed: forbid, queue, allow`}},
		},
		{
			name: "bad on_failure",
			src:  header + "  - name: a\n    run: [x]\n    on_failure: stop\n",
			want: []wantErr{{5, "a", "tasks[a].on_failure", `invalid value "stop"; allowed: continue, cancel_run`}},
		},
		{
			name: "bad duration",
			src:  header + "  - name: a\n    run: [x]\n    timeout: 30 minutes\n",
			want: []wantErr{{5, "a", "tasks[a].timeout", `invalid duration "30 minutes": use Go syntax`}},
		},
		{
			name: "zero duration",
			src:  "name: j\ntimeout: 0s\ntasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{2, "", "timeout", `duration must be greater than zero, got "0s"`}},
		},
		{
			name: "negative duration",
			src:  header + "  - name: a\n    run: [x]\n    retry_delay: -5s\n",
			want: []wantErr{{5, "a", "tasks[a].retry_delay", "duration must be greater than zero"}},
		},
		{
			name: "duration without unit",
			src:  header + "  - name: a\n    run: [x]\n    timeout: 90\n",
			want: []wantErr{{5, "a", "tasks[a].timeout", `duration 90 needs a unit, like "90s" or "90m"`}},
		},
		{
			name: "negative retries",
			src:  header + "  - name: a\n    run: [x]\n    retries: -1\n",
			want: []wantErr{{5, "a", "tasks[a].retries", "must not be negative, got -1"}},
		},
		{
			name: "negative max_parallel",
			src:  "name: j\nmax_parallel: -8\ntasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{2, "", "max_parallel", "must not be negative"}},
		},
		{
			name: "huge priority",
			src:  header + "  - name: a\n    run: [x]\n    priority: 99999999999\n",
			want: []wantErr{{5, "a", "tasks[a].priority", "must be at most 2147483647"}},
		},
		{
			name: "retries as a string",
			src:  header + "  - name: a\n    run: [x]\n    retries: \"3\"\n",
			want: []wantErr{{5, "a", "tasks[a].retries", "must be a whole number, not a string"}},
		},
		{
			name: "fractional stage",
			src:  header + "  - name: a\n    run: [x]\n    stage: 1.5\n",
			want: []wantErr{{5, "a", "tasks[a].stage", "must be a whole number, not a number"}},
		},
		{
			name: "allow_failure is not a boolean",
			src:  header + "  - name: a\n    run: [x]\n    allow_failure: maybe\n",
			want: []wantErr{{5, "a", "tasks[a].allow_failure", "must be true or false, not a string"}},
		},
		{
			name: "env is a list",
			src:  header + "  - name: a\n    run: [x]\n    env: [A=1]\n",
			want: []wantErr{{5, "a", "tasks[a].env", "must be a mapping, not a list"}},
		},
		{
			name: "bad job name",
			src:  "name: nightly load\ntasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{1, "", "name", `invalid name "nightly load": use only letters, digits, '.', '_' and '-'`}},
		},
		{
			name: "task name starting with a dash",
			src:  header + "  - name: -load\n    run: [x]\n",
			want: []wantErr{{3, "-load", "tasks[-load].name", "must start with a letter or digit"}},
		},
		{
			name: "task name too long",
			src:  header + "  - name: " + strings.Repeat("a", 129) + "\n    run: [x]\n",
			want: []wantErr{{3, strings.Repeat("a", 129), "tasks[" + strings.Repeat("a", 129) + "].name", "the limit is 128"}},
		},
		{
			name: "empty runs_on",
			src:  header + "  - name: a\n    run: [x]\n    runs_on: {labels: {}}\n",
			want: []wantErr{{5, "a", "tasks[a].runs_on", "must name an agent or labels"}},
		},
		{
			name: "bad label key",
			src:  header + "  - name: a\n    run: [x]\n    runs_on:\n      labels: {\"ro le\": ssis}\n",
			want: []wantErr{{6, "a", "tasks[a].runs_on.labels.ro le", `invalid label key "ro le"`}},
		},
		{
			name: "empty label value",
			src:  header + "  - name: a\n    run: [x]\n    runs_on:\n      labels:\n        role: \"\"\n",
			want: []wantErr{{7, "a", "tasks[a].runs_on.labels.role", "label value must not be empty"}},
		},
		{
			name: "bad agent name",
			src:  header + "  - name: a\n    run: [x]\n    runs_on: {agent: \"etl 02\"}\n",
			want: []wantErr{{5, "a", "tasks[a].runs_on.agent", "no spaces or control characters"}},
		},
		{
			name: "bad env name",
			src:  header + "  - name: a\n    run: [x]\n    env:\n      LOAD-DATE: x\n",
			want: []wantErr{{6, "a", "tasks[a].env.LOAD-DATE", `invalid environment variable name "LOAD-DATE"`}},
		},
		{
			name: "reserved env name",
			src:  header + "  - name: a\n    run: [x]\n    env:\n      baton_item: x\n",
			want: []wantErr{{6, "a", "tasks[a].env.baton_item", "names starting with BATON_ are reserved"}},
		},
		{
			name: "secret name with a path",
			src:  header + "  - name: a\n    run: [x]\n    env:\n      PASSWORD: secret:../x\n",
			want: []wantErr{{6, "a", "tasks[a].env.PASSWORD", `invalid secret name "../x" in "secret:../x": use 1 to 128 letters, digits, '.', '_' and '-', starting with a letter or digit`}},
		},
		{
			name: "empty secret name",
			src:  header + "  - name: a\n    run: [x]\n    env:\n      PASSWORD: \"secret:\"\n",
			want: []wantErr{{6, "a", "tasks[a].env.PASSWORD", `invalid secret name ""`}},
		},
		{
			name: "secret chosen by a placeholder",
			src:  header + "  - name: a\n    run: [x]\n    env:\n      PASSWORD: secret:${{ params.which }}\n",
			want: []wantErr{{6, "a", "tasks[a].env.PASSWORD", "a secret reference cannot hold placeholders"}},
		},
		{
			name: "max_parallel without for_each",
			src:  header + "  - name: a\n    run: [x]\n    max_parallel: 4\n",
			want: []wantErr{{5, "a", "tasks[a].max_parallel", "only applies to a for_each task"}},
		},
		{
			name: "for_each with two sources",
			src:  "name: j\nparams: {ids: \"1,2\"}\ntasks:\n  - name: a\n    run: [x]\n    for_each:\n      items: [1]\n      param: ids\n",
			want: []wantErr{{7, "a", "tasks[a].for_each", "must set exactly one of items, param or from; found items and param"}},
		},
		{
			name: "for_each with no source",
			src:  header + "  - name: a\n    run: [x]\n    for_each: {}\n",
			want: []wantErr{{5, "a", "tasks[a].for_each", "must set exactly one of items, param or from"}},
		},
		{
			name: "for_each with empty items",
			src:  header + "  - name: a\n    run: [x]\n    for_each: {items: []}\n",
			want: []wantErr{{5, "a", "tasks[a].for_each.items", "must not be empty"}},
		},
		{
			name: "for_each.param not declared",
			src:  "name: j\nparams: {regions: \"east,west\"}\ntasks:\n  - name: a\n    run: [x]\n    for_each: {param: region}\n",
			want: []wantErr{{6, "a", "tasks[a].for_each.param", `unknown param "region"; declare it under the job's params (declared: regions)`}},
		},
		{
			name: "retry_backoff below 1",
			src:  header + "  - name: a\n    run: [x]\n    retry_backoff: 0.5\n",
			want: []wantErr{{5, "a", "tasks[a].retry_backoff", "must be at least 1"}},
		},
		{
			name: "retry_backoff not finite",
			src:  header + "  - name: a\n    run: [x]\n    retry_backoff: .inf\n",
			want: []wantErr{{5, "a", "tasks[a].retry_backoff", "must be a finite number"}},
		},
		{
			name: "two documents",
			src:  header + "  - name: a\n    run: [x]\n---\n" + header + "  - name: b\n    run: [x]\n",
			want: []wantErr{{5, "", "", "a job file holds one YAML document"}},
		},
		{
			name: "empty file",
			src:  "# nothing here\n",
			want: []wantErr{{0, "", "", "job file is empty"}},
		},
		{
			name: "not a mapping",
			src:  "- name: a\n",
			want: []wantErr{{1, "", "", "a job file must be a mapping with the fields name, description"}},
		},
		{
			name: "yaml syntax error",
			src:  header + "  - name: a\n    run: [x\n",
			want: []wantErr{{4, "", "", "invalid YAML: did not find expected ',' or ']'"}},
		},
		{
			name: "duplicate key",
			src:  header + "  - name: a\n    run: [x]\n    retries: 1\n    retries: 2\n",
			want: []wantErr{{6, "a", "tasks[a].retries", `duplicate key "retries" (first at line 5)`}},
		},
		{
			name: "when does not give a boolean",
			src:  header + "  - name: a\n    run: [x]\n  - name: b\n    needs: [a]\n    run: [x]\n    when: tasks.a.state + \"!\"\n",
			want: []wantErr{{8, "b", "tasks[b].when", "condition must be true or false"}},
		},
		{
			name: "when with a syntax error",
			src:  header + "  - name: a\n    run: [x]\n    when: params.x ==\n",
			want: []wantErr{{5, "a", "tasks[a].when", "invalid expression: Syntax error"}},
		},
		{
			name: "when reads a task that is not upstream",
			src: header + "  - name: count-rows\n    run: [x]\n  - name: notify\n    run: [x]\n" +
				"    when: int(tasks[\"count-rows\"].outputs.RowCount) == 0\n",
			want: []wantErr{{7, "notify", "tasks[notify].when", `refers to task "count-rows", which is not upstream of this task; add it to needs`}},
		},
		{
			name: "when reads an unknown task",
			src:  header + "  - name: a\n    run: [x]\n  - name: b\n    needs: [a]\n    run: [x]\n    when: tasks.aa.state == \"succeeded\"\n",
			want: []wantErr{{8, "b", "tasks[b].when", `refers to unknown task "aa" (did you mean "a"?)`}},
		},
		{
			name: "edge when reads a downstream task",
			src: header + "  - name: a\n    run: [x]\n  - name: b\n    run: [x]\n    needs:\n      - task: a\n" +
				"        when: tasks.c.state == \"succeeded\"\n  - name: c\n    needs: [b]\n    run: [x]\n",
			want: []wantErr{{9, "b", "tasks[b].needs[0].when", `refers to task "c", which is not upstream of this task`}},
		},
		{
			name: "when reads an undeclared param",
			src:  header + "  - name: a\n    run: [x]\n    when: params.full == \"yes\"\n",
			want: []wantErr{{5, "a", "tasks[a].when", `unknown param "full"; declare it under the job's params`}},
		},
		{
			name: "item in a plain task",
			src:  header + "  - name: a\n    run: [x, \"${{ item }}\"]\n",
			want: []wantErr{{4, "a", "tasks[a].run[1]", "in ${{ item }}: item is only available in for-each tasks"}},
		},
		{
			name: "index in for_each.from",
			src:  header + "  - name: a\n    run: [x]\n    for_each: {from: '[index]'}\n",
			want: []wantErr{{5, "a", "tasks[a].for_each.from", "index is only available in the run, env and working_dir of a for-each task"}},
		},
		{
			name: "from gives a number",
			src:  header + "  - name: a\n    run: [x]\n    for_each: {from: '1 + 2'}\n",
			want: []wantErr{{5, "a", "tasks[a].for_each.from", "must give a list, or a string holding a JSON list"}},
		},
		{
			name: "unclosed placeholder",
			src:  header + "  - name: a\n    run: [x]\n    env:\n      DAY: \"${{ params.day \"\n",
			want: []wantErr{{6, "a", "tasks[a].env.DAY", `unclosed placeholder: "${{" without a matching "}}"`}},
		},
		{
			name: "empty placeholder",
			src:  header + "  - name: a\n    run: [x]\n    working_dir: /data/${{ }}\n",
			want: []wantErr{{5, "a", "tasks[a].working_dir", "empty placeholder"}},
		},
		{
			name: "placeholder type error",
			src:  "name: j\nparams: {n: \"1\"}\ntasks:\n  - name: a\n    run: [x, \"${{ params.n + 1 }}\"]\n",
			want: []wantErr{{5, "a", "tasks[a].run[1]", "in ${{ params.n + 1 }}: invalid expression: found no matching overload for '_+_'"}},
		},
		{
			name: "loop variable shadows a Baton variable",
			src:  header + "  - name: a\n    run: [x]\n    when: '[1, 2].exists(tasks, tasks > 1)'\n",
			want: []wantErr{{5, "a", "tasks[a].when", `do not name a loop variable "tasks"`}},
		},
		{
			name: "failure edge on a stage dependency",
			src:  header + "  - name: a\n    stage: 1\n    run: [x]\n  - name: b\n    stage: 2\n    needs: [{task: a, status: failure}]\n    run: [x]\n",
			want: []wantErr{{8, "b", "tasks[b].needs[0]", `status failure can never be met: "a" is in stage 1`}},
		},
		{
			name: "params colliding in the environment",
			src:  "name: j\nparams:\n  load-date: a\n  load_date: b\ntasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{4, "", "params.load_date", `params "load-date" and "load_date" both become the environment variable BATON_PARAM_LOAD_DATE`}},
		},
		{
			name: "bad param name",
			src:  "name: j\nparams:\n  \"load date\": a\ntasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{3, "", "params.load date", `invalid name "load date"`}},
		},
		{
			name: "param value is a list",
			src:  "name: j\nparams:\n  ids: [1, 2]\ntasks:\n  - name: a\n    run: [x]\n",
			want: []wantErr{{3, "", "params.ids", "must be a string, not a list"}},
		},
		{
			name: "merge key of a scalar",
			src:  header + "  - name: a\n    <<: 5\n    run: [x]\n",
			want: []wantErr{{4, "a", "tasks[a]", "a merge key (<<) must refer to a mapping"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := parseErrors(t, tc.src)
			checkErrors(t, e, tc.want)
		})
	}
}

func TestParseCollectsEveryError(t *testing.T) {
	t.Parallel()
	src := `name: nightly
overlap: sometimes
tasks:
  - name: extract
    run: []
    retries: -2
  - name: load
    needs: [extrct]
    run: [x]
    timeout: soon
  - name: extract
    run: [y]
`
	e := parseErrors(t, src)
	checkErrors(t, e, []wantErr{
		{2, "", "overlap", `invalid value "sometimes"`},
		{5, "extract", "tasks[extract].run", "must not be empty"},
		{6, "extract", "tasks[extract].retries", "must not be negative"},
		{8, "load", "tasks[load].needs[0].task", `unknown task "extrct" (did you mean "extract"?)`},
		{10, "load", "tasks[load].timeout", `invalid duration "soon"`},
		{11, "extract", "tasks[extract].name", "duplicate task name"},
	})
	for i := 1; i < len(e.Errs); i++ {
		if e.Errs[i].Line < e.Errs[i-1].Line {
			t.Errorf("errors not sorted by line:\n%s", dumpErrs(e))
		}
	}
	want := `line 8: task "load": needs[0].task: unknown task "extrct" (did you mean "extract"?)`
	if got := e.Error(); !strings.Contains(got, want+"\n") {
		t.Errorf("Error() = %q, want a line %q", got, want)
	}
	if got := len(strings.Split(e.Error(), "\n")); got != len(e.Errs) {
		t.Errorf("Error() has %d lines, want one per problem (%d)", got, len(e.Errs))
	}
}

func TestFieldErrorString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   FieldError
		want string
	}{
		{"task field", FieldError{14, "count-rows", "tasks[count-rows].needs[0].task", `unknown task "cout-rows"`},
			`line 14: task "count-rows": needs[0].task: unknown task "cout-rows"`},
		{"job field", FieldError{2, "", "overlap", "bad"}, "line 2: overlap: bad"},
		{"no line", FieldError{0, "a", "tasks[a].run", "bad"}, `task "a": run: bad`},
		{"whole task", FieldError{3, "a", "tasks[a]", "bad"}, `line 3: task "a": bad`},
		{"whole file", FieldError{0, "", "", "job file is empty"}, "job file is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.in.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	t.Parallel()
	src := []byte(header + "  - name: a\n    run: [x]\n# " + strings.Repeat("x", MaxSourceSize) + "\n")
	e := parseErrors(t, string(src))
	checkErrors(t, e, []wantErr{{0, "", "", "the limit is 1048576 bytes (1 MiB)"}})
}

func TestParseAliasBomb(t *testing.T) {
	t.Parallel()
	// Each level merges the previous one twice: without a budget, walking
	// the merge keys would visit 2^40 mappings.
	var b strings.Builder
	b.WriteString("name: j\ntasks:\n  - &m0 {name: a, run: [x]}\n")
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&b, "  - &m%d {<<: [*m%d, *m%d], name: t%d}\n", i, i-1, i-1, i)
	}
	done := make(chan *Error, 1)
	go func() { done <- parseErrors(t, b.String()) }()
	select {
	case e := <-done:
		checkErrors(t, e, []wantErr{{0, "", "", "too large once its aliases are expanded"}})
	case <-time.After(20 * time.Second):
		t.Fatal("Parse did not stop expanding aliases")
	}
}

// everything uses every field of a job file.
const everything = `# Every field.
name: everything
description: Uses every field
params:
  load_date: "2026-11-21"
  regions: east,west
  full: true
  batch: 500
max_parallel: 8
overlap: queue
timeout: 2h
tasks:
  - name: extract
    description: Pull the source rows
    stage: 1
    runs_on: {agent: etl-02}
    run: [dtexec, /ISServer, "\\SSISDB\\DW\\Extract.dtsx", /Par, "LoadDate;${{ params.load_date }}"]
    env: {LOAD_DATE: "${{ params.load_date }}", BATCH: 500}
    working_dir: /data/${{ params.load_date }}
    retries: 3
    retry_delay: 30s
    retry_backoff: 2
    retry_on_lost: false
    timeout: 30m
    priority: 10
  - name: count-rows
    stage: 2
    runs_on:
      labels: {role: sql, dc: east}
    run: [sqlcmd, -b, -Q, "SELECT COUNT(*) FROM stage.rows"]
    allow_failure: true
    on_failure: cancel_run
  - name: per-region
    needs:
      - task: count-rows
        status: completed
        when: tasks["count-rows"].outputs.RowCount != "0"
    trigger: any
    when: params.full == "true"
    for_each: {param: regions}
    max_parallel: 2
    run: [/opt/etl/region, "${{ item }}", "${{ index }}"]
  - name: per-client
    needs: [count-rows]
    for_each:
      from: tasks["count-rows"].outputs.ClientIds
    run: [/opt/etl/client, "--id=${{ item.id }}"]
  - name: static
    needs: [count-rows]
    for_each: {items: [a, 2, true]}
    run: [/opt/etl/static, "${{ item }}"]
`

func TestParseEverything(t *testing.T) {
	t.Parallel()
	s := mustParse(t, everything)
	f := false
	want := &Spec{
		Name:        "everything",
		Description: "Uses every field",
		Params:      map[string]string{"load_date": "2026-11-21", "regions": "east,west", "full": "true", "batch": "500"},
		MaxParallel: 8,
		Overlap:     "queue",
		Timeout:     Duration(2 * time.Hour),
		Tasks: []*Task{
			{
				Name: "extract", Description: "Pull the source rows", Stage: 1, Trigger: "all",
				RunsOn:     Selector{Agent: "etl-02"},
				Run:        []string{"dtexec", "/ISServer", `\SSISDB\DW\Extract.dtsx`, "/Par", "LoadDate;${{ params.load_date }}"},
				Env:        map[string]string{"LOAD_DATE": "${{ params.load_date }}", "BATCH": "500"},
				WorkingDir: "/data/${{ params.load_date }}",
				Retries:    3, RetryDelay: Duration(30 * time.Second), RetryBackoff: 2, RetryOnLost: &f,
				Timeout: Duration(30 * time.Minute), OnFailure: "continue", Priority: 10,
			},
			{
				Name: "count-rows", Stage: 2, Trigger: "all",
				RunsOn:       Selector{Labels: map[string]string{"role": "sql", "dc": "east"}},
				Run:          []string{"sqlcmd", "-b", "-Q", "SELECT COUNT(*) FROM stage.rows"},
				AllowFailure: true, OnFailure: "cancel_run",
			},
			{
				Name:    "per-region",
				Needs:   []Edge{{Task: "count-rows", Status: "completed", When: `tasks["count-rows"].outputs.RowCount != "0"`}},
				Trigger: "any", When: `params.full == "true"`,
				ForEach: &ForEach{Param: "regions"}, MaxParallel: 2,
				Run:       []string{"/opt/etl/region", "${{ item }}", "${{ index }}"},
				OnFailure: "continue",
			},
			{
				Name: "per-client", Needs: []Edge{{Task: "count-rows", Status: "success"}}, Trigger: "all",
				ForEach:   &ForEach{From: `tasks["count-rows"].outputs.ClientIds`},
				Run:       []string{"/opt/etl/client", "--id=${{ item.id }}"},
				OnFailure: "continue",
			},
			{
				Name: "static", Needs: []Edge{{Task: "count-rows", Status: "success"}}, Trigger: "all",
				ForEach:   &ForEach{Items: []string{"a", "2", "true"}},
				Run:       []string{"/opt/etl/static", "${{ item }}"},
				OnFailure: "continue",
			},
		},
	}
	if diff := cmp.Diff(want, s); diff != "" {
		t.Errorf("Parse() mismatch (-want +got):\n%s", diff)
	}
}

// validFiles returns every valid job file of the tests, by name.
func validFiles(t *testing.T) map[string]string {
	t.Helper()
	files := map[string]string{
		"everything": everything,
		"minimal":    "name: j\ntasks:\n  - name: a\n    run: [x]\n",
		"json":       `{"name": "j", "tasks": [{"name": "a", "run": ["x", 1, false]}, {"name": "b", "needs": ["a"], "run": ["y"]}]}`,
		"anchors": `name: anchors
tasks:
  - name: a
    run: [x]
    env: &common {A: "1", B: "2"}
    retries: &r 2
  - &defaults
    name: b
    run: [y]
    env: *common
    retries: *r
    timeout: 5m
  - <<: *defaults
    name: c
    timeout: 10m
`,
		"stages": `name: stages
tasks:
  - {name: s1a, stage: 1, run: [x]}
  - {name: s1b, stage: 1, run: [x]}
  - {name: s5, stage: 5, run: [x], when: 'tasks.s1a.state == "succeeded"'}
  - {name: s9, stage: 9, run: [x], needs: [{task: s1b, status: completed}]}
  - {name: free, run: [x]}
  - {name: may-fail, stage: 10, allow_failure: true, run: [x]}
  - {name: on-failure, stage: 11, needs: [{task: may-fail, status: failure}], run: [x]}
`,
		"escapes": "name: escapes\ntasks:\n  - name: a\n    run: [\"echo\", \"$${{ not a placeholder }}\", \"tab\\there\", \"ünïcödé\", \"<&>\", '\"quoted\"', \"\\u0001\", \"\\u2028\\u2029\", \"back\\\\slash\", \"😀\"]\n",
	}
	for _, name := range []string{"design-example.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = string(b)
	}
	return files
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for name, src := range validFiles(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := mustParse(t, src)
			c1, err := s.Canonical()
			if err != nil {
				t.Fatalf("Canonical() error: %v", err)
			}
			s2, err := Decode(c1)
			if err != nil {
				t.Fatalf("Decode(Canonical()) error: %v\ncanonical: %s", err, c1)
			}
			if diff := cmp.Diff(s, s2); diff != "" {
				t.Errorf("Decode(Canonical()) mismatch (-parsed +decoded):\n%s", diff)
			}
			c2, err := s2.Canonical()
			if err != nil {
				t.Fatalf("Canonical() error: %v", err)
			}
			if !bytes.Equal(c1, c2) {
				t.Errorf("Canonical() changed after a round trip:\n%s\n%s", c1, c2)
			}
			// The canonical form is itself a valid job file.
			s3 := mustParse(t, string(c1))
			if diff := cmp.Diff(s, s3); diff != "" {
				t.Errorf("Parse(Canonical()) mismatch (-parsed +reparsed):\n%s", diff)
			}
		})
	}
}

func TestCanonicalIgnoresFormatting(t *testing.T) {
	t.Parallel()
	variants := []string{
		// Block style with comments.
		`# Nightly load
name: nightly   # the job
params:
  b: "2"
  a: "1"
tasks:
  - name: extract
    run: [extract.sh, --full]
    env:
      Y: "y"
      X: "x"
  - name: load
    needs: [extract]
    runs_on:
      labels: {role: ssis, dc: east}
    run:
      - load.sh
    retry_backoff: 1.0
`,
		// Flow style, keys in another order, defaults spelled out.
		`{tasks: [{run: [extract.sh, --full], name: extract, env: {X: x, Y: y}, trigger: all, on_failure: continue, retry_on_lost: true},
 {needs: [{status: success, task: extract}], name: load, run: [load.sh], runs_on: {labels: {dc: east, role: ssis}}, retry_backoff: 1}],
 params: {a: "1", b: "2"}, overlap: forbid, name: nightly, description: ""}`,
		// JSON.
		`{"name": "nightly", "params": {"a": "1", "b": "2"}, "tasks": [
  {"name": "extract", "run": ["extract.sh", "--full"], "env": {"X": "x", "Y": "y"}},
  {"name": "load", "needs": ["extract"], "run": ["load.sh"], "runs_on": {"labels": {"role": "ssis", "dc": "east"}},
   "description": null, "env": {}}]}`,
	}
	var first []byte
	for i, src := range variants {
		s := mustParse(t, src)
		c, err := s.Canonical()
		if err != nil {
			t.Fatalf("Canonical() error: %v", err)
		}
		if i == 0 {
			first = c
			continue
		}
		if !bytes.Equal(c, first) {
			t.Errorf("variant %d: Canonical() =\n%s\nwant\n%s", i, c, first)
		}
	}
	want := `{"name":"nightly","params":{"a":"1","b":"2"},"overlap":"forbid","tasks":[` +
		`{"name":"extract","trigger":"all","run":["extract.sh","--full"],"env":{"X":"x","Y":"y"},"on_failure":"continue"},` +
		`{"name":"load","needs":[{"task":"extract","status":"success"}],"trigger":"all","runs_on":{"labels":{"dc":"east","role":"ssis"}},"run":["load.sh"],"on_failure":"continue"}]}`
	if string(first) != want {
		t.Errorf("Canonical() =\n%s\nwant\n%s", first, want)
	}
}

func TestDesignExample(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("testdata", "design-example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := mustParse(t, string(b))
	if got, want := len(s.Tasks), 6; got != want {
		t.Fatalf("len(Tasks) = %d, want %d", got, want)
	}
	if got, want := s.StageDeps("count-rows"), []string{"stage-customers", "stage-orders"}; !cmp.Equal(got, want) {
		t.Errorf("StageDeps(count-rows) = %v, want %v", got, want)
	}
	if got, want := s.Upstream("cleanup"), []string{"stage-customers", "stage-orders", "count-rows", "per-client"}; !cmp.Equal(got, want) {
		t.Errorf("Upstream(cleanup) = %v, want %v", got, want)
	}
	if got, want := s.Timeout.D(), 2*time.Hour; got != want {
		t.Errorf("Timeout = %v, want %v", got, want)
	}
	x, err := CompileExprs(s)
	if err != nil {
		t.Fatalf("CompileExprs() error: %v", err)
	}
	argv, _, _, err := x.Expand("stage-customers", &Vars{Params: s.Params})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := argv[4], "LoadDate;2026-11-21"; got != want {
		t.Errorf("argv[4] = %q, want %q", got, want)
	}
}

func TestDecodeRevalidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want wantErr
	}{
		{"unknown task", `{"name":"j","tasks":[{"name":"a","needs":[{"task":"b"}],"run":["x"]}]}`,
			wantErr{0, "a", "tasks[a].needs[0].task", `unknown task "b"`}},
		{"bad duration", `{"name":"j","timeout":"soon","tasks":[{"name":"a","run":["x"]}]}`,
			wantErr{0, "", "timeout", `invalid duration "soon"`}},
		{"unknown field", `{"name":"j","tasks":[{"name":"a","run":["x"],"shell":true}]}`,
			wantErr{0, "a", "tasks[a].shell", `unknown field "shell"`}},
		{"not JSON", `{"name":`, wantErr{0, "", "", "invalid YAML"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := Decode([]byte(tc.in))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Decode() error = %v, want *Error", err)
			}
			checkErrors(t, e, []wantErr{tc.want})
		})
	}
}

func TestGraphHelpers(t *testing.T) {
	t.Parallel()
	s := mustParse(t, `name: g
tasks:
  - {name: a, stage: 1, run: [x]}
  - {name: b, stage: 1, run: [x]}
  - {name: c, stage: 3, run: [x], needs: [d]}
  - {name: d, run: [x]}
  - {name: e, stage: 7, run: [x]}
  - {name: f, needs: [c, d], run: [x]}
`)
	tests := []struct {
		name string
		got  []string
		want []string
	}{
		{"StageDeps(c)", s.StageDeps("c"), []string{"a", "b"}},
		{"StageDeps(e)", s.StageDeps("e"), []string{"c"}},
		{"StageDeps(a)", s.StageDeps("a"), nil},
		{"StageDeps(d)", s.StageDeps("d"), nil},
		{"Deps(c)", s.Deps("c"), []string{"a", "b", "d"}},
		{"Deps(f)", s.Deps("f"), []string{"c", "d"}},
		{"Upstream(e)", s.Upstream("e"), []string{"a", "b", "c", "d"}},
		{"Upstream(a)", s.Upstream("a"), nil},
		{"Downstream(d)", s.Downstream("d"), []string{"c", "e", "f"}},
		{"Downstream(a)", s.Downstream("a"), []string{"c", "e", "f"}},
		{"Downstream(f)", s.Downstream("f"), nil},
		{"Upstream(nope)", s.Upstream("nope"), nil},
	}
	for _, tc := range tests {
		if !cmp.Equal(tc.got, tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if got := s.Task("d"); got == nil || got.Name != "d" {
		t.Errorf("Task(d) = %v, want task d", got)
	}
	if got := s.Task("nope"); got != nil {
		t.Errorf("Task(nope) = %v, want nil", got)
	}
}

func TestTaskPolicies(t *testing.T) {
	t.Parallel()
	s := mustParse(t, `name: p
tasks:
  - {name: plain, run: [x]}
  - {name: backoff, run: [x], retries: 5, retry_delay: 10s, retry_backoff: 2, retry_on_lost: false}
`)
	plain, backoff := s.Task("plain"), s.Task("backoff")
	if !plain.RetriesOnLost() || backoff.RetriesOnLost() {
		t.Errorf("RetriesOnLost() = %v, %v; want true, false", plain.RetriesOnLost(), backoff.RetriesOnLost())
	}
	if got := plain.Backoff(); got != 1 {
		t.Errorf("plain.Backoff() = %v, want 1", got)
	}
	if got := backoff.Backoff(); got != 2 {
		t.Errorf("backoff.Backoff() = %v, want 2", got)
	}
}

func TestParamEnv(t *testing.T) {
	t.Parallel()
	got := ParamEnv(map[string]string{"load_date": "a", "Region.Name": "b", "x-y-1": "c"})
	want := map[string]string{"BATON_PARAM_LOAD_DATE": "a", "BATON_PARAM_REGION_NAME": "b", "BATON_PARAM_X_Y_1": "c"}
	if !cmp.Equal(got, want) {
		t.Errorf("ParamEnv() = %v, want %v", got, want)
	}
}

func TestScalarText(t *testing.T) {
	t.Parallel()
	s := mustParse(t, `name: j
params: {date: 2026-11-21, n: 007, f: 2.50, b: yes, t: TRUE}
tasks:
  - name: a
    run: [prog, 1, 2.50, true, 2026-11-21, 0x1F, -3, 1e3, "quoted", plain text]
    env: {N: 10, B: false}
    runs_on: {labels: {dc: 1}}
`)
	if want := map[string]string{"date": "2026-11-21", "n": "007", "f": "2.50", "b": "yes", "t": "TRUE"}; !cmp.Equal(s.Params, want) {
		t.Errorf("Params = %q, want %q", s.Params, want)
	}
	a := s.Task("a")
	if want := []string{"prog", "1", "2.50", "true", "2026-11-21", "0x1F", "-3", "1e3", "quoted", "plain text"}; !cmp.Equal(a.Run, want) {
		t.Errorf("Run = %q, want %q", a.Run, want)
	}
	if want := map[string]string{"N": "10", "B": "false"}; !cmp.Equal(a.Env, want) {
		t.Errorf("Env = %q, want %q", a.Env, want)
	}
	if want := map[string]string{"dc": "1"}; !cmp.Equal(a.RunsOn.Labels, want) {
		t.Errorf("Labels = %q, want %q", a.RunsOn.Labels, want)
	}
}
