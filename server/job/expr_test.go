package job

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// exprJob is a job whose task "t" can carry any expression; extract and
// count-rows are upstream of it unless taskYAML has its own needs.
func exprJob(t *testing.T, taskYAML string) (*Spec, *Exprs) {
	t.Helper()
	if !strings.Contains(taskYAML, "needs:") {
		taskYAML = "    needs: [count-rows]\n" + taskYAML
	}
	src := `name: exprs
params: {mode: full, which: extract, s: "", ids: "", n: "7"}
tasks:
  - name: extract
    run: [x]
  - name: count-rows
    needs: [extract]
    run: [x]
  - name: t
` + taskYAML
	s := mustParse(t, src)
	x, err := CompileExprs(s)
	if err != nil {
		t.Fatalf("CompileExprs() error: %v", err)
	}
	return s, x
}

func vars(outputs map[string]string) *Vars {
	return &Vars{
		Params: map[string]string{"mode": "full", "which": "extract", "s": "", "ids": "", "n": "7"},
		Tasks: map[string]TaskVars{
			"extract":    {State: "succeeded", Outputs: map[string]string{"Flag": "true"}},
			"count-rows": {State: "succeeded", Outputs: outputs},
		},
	}
}

func TestTaskWhen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		when    string
		outputs map[string]string
		want    bool
		wantErr string // substring of the error; "" for none
	}{
		{name: "row count zero", when: `int(tasks["count-rows"].outputs.RowCount) == 0`,
			outputs: map[string]string{"RowCount": "0"}, want: true},
		{name: "row count not zero", when: `int(tasks["count-rows"].outputs.RowCount) == 0`,
			outputs: map[string]string{"RowCount": "12"}, want: false},
		{name: "row count not a number", when: `int(tasks["count-rows"].outputs.RowCount) == 0`,
			outputs: map[string]string{"RowCount": "abc"},
			wantErr: `task "t": when: int(tasks["count-rows"].outputs.RowCount) == 0: `},
		{name: "missing output", when: `int(tasks["count-rows"].outputs.RowCount) == 0`,
			outputs: map[string]string{}, wantErr: "no such key: RowCount"},
		{name: "state by field", when: `tasks.extract.state == "succeeded"`, want: true},
		{name: "transitive upstream", when: `tasks.extract.outputs.Flag == "true"`, want: true},
		{name: "param", when: `params.mode == "full" && params["n"] == "7"`, want: true},
		{name: "has output", when: `has(tasks["count-rows"].outputs.RowCount)`, outputs: map[string]string{}, want: false},
		{name: "string functions", when: `tasks["count-rows"].outputs.Names.split(",").size() == 3 && tasks["count-rows"].outputs.Names.upperAscii().startsWith("A")`,
			outputs: map[string]string{"Names": "a,b,c"}, want: true},
		{name: "dynamic task name", when: `tasks[params.which].state == "succeeded"`, want: true},
		{name: "numeric comparison across types", when: `int(params.n) > 6.5`, want: true},
		{name: "result is not a boolean", when: `tasks.extract.outputs.Flag`,
			wantErr: `condition gave string true, not true or false`},
		{name: "cost limit", when: `params.s.split("").map(a, params.s.split("").map(b, a + b)).size() > 0`,
			wantErr: "cost limit exceeded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, x := exprJob(t, fmt.Sprintf("    when: %q\n    run: [x]\n", tc.when))
			v := vars(tc.outputs)
			if tc.name == "cost limit" {
				v.Params["s"] = strings.Repeat("x", 2000)
			}
			got, err := x.TaskWhen("t", v)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("TaskWhen() = %v, %v; want error containing %q", got, err, tc.wantErr)
				}
				var ee *EvalError
				if !errors.As(err, &ee) || ee.Task != "t" || ee.Field != "when" {
					t.Errorf("TaskWhen() error = %#v, want *EvalError for task t, field when", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("TaskWhen() error: %v", err)
			}
			if got != tc.want {
				t.Errorf("TaskWhen() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestTaskWhenWithoutCondition(t *testing.T) {
	t.Parallel()
	_, x := exprJob(t, "    run: [x]\n")
	got, err := x.TaskWhen("t", nil)
	if err != nil || !got {
		t.Errorf("TaskWhen() = %v, %v; want true, nil", got, err)
	}
	if _, err := x.TaskWhen("nope", nil); err == nil {
		t.Error("TaskWhen(unknown task) succeeded")
	}
}

func TestEdgeWhen(t *testing.T) {
	t.Parallel()
	_, x := exprJob(t, `    needs:
      - count-rows
      - task: extract
        status: completed
        when: tasks.extract.state == "failed" || int(tasks["count-rows"].outputs.RowCount) > 100
    run: [x]
`)
	tests := []struct {
		edge    int
		rows    string
		want    bool
		wantErr string
	}{
		{edge: 0, rows: "1", want: true},
		{edge: 1, rows: "1", want: false},
		{edge: 1, rows: "101", want: true},
		{edge: 1, rows: "x", wantErr: `task "t": needs[1].when: `},
		{edge: 2, wantErr: `task "t" has no edge 2`},
		{edge: -1, wantErr: `task "t" has no edge -1`},
	}
	for _, tc := range tests {
		got, err := x.EdgeWhen("t", tc.edge, vars(map[string]string{"RowCount": tc.rows}))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("EdgeWhen(%d) with rows %q = %v, %v; want error containing %q", tc.edge, tc.rows, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("EdgeWhen(%d) with rows %q = %v, %v; want %v", tc.edge, tc.rows, got, err, tc.want)
		}
	}
}

func TestForEachItems(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		forEach string
		params  map[string]string
		outputs map[string]string
		want    []Item
		wantErr string
	}{
		{name: "static items", forEach: "{items: [east, 2, true]}",
			want: []Item{{"east", "east"}, {"2", "2"}, {"true", "true"}}},
		{name: "param as comma list", forEach: "{param: ids}", params: map[string]string{"ids": " east, west ,,north "},
			want: []Item{{"east", "east"}, {"west", "west"}, {"north", "north"}}},
		{name: "param as JSON list", forEach: "{param: ids}", params: map[string]string{"ids": `[1, "two", {"id": 3, "name": "c"}, 2.5, null]`},
			want: []Item{{int64(1), "1"}, {"two", "two"}, {map[string]any{"id": int64(3), "name": "c"}, `{"id":3,"name":"c"}`}, {2.5, "2.5"}, {nil, ""}}},
		{name: "big ids keep every digit", forEach: "{param: ids}", params: map[string]string{"ids": `[9007199254740993]`},
			want: []Item{{int64(9007199254740993), "9007199254740993"}}},
		{name: "empty param", forEach: "{param: ids}", params: map[string]string{"ids": ""}, want: []Item{}},
		{name: "param that is broken JSON", forEach: "{param: ids}", params: map[string]string{"ids": "[1, 2"},
			wantErr: `task "t": for_each.param: ids: not a JSON list`},
		{name: "param without a value", forEach: "{param: ids}", params: map[string]string{},
			wantErr: `param "ids" has no value`},
		{name: "from an output holding JSON", forEach: `{from: 'tasks["count-rows"].outputs.ClientIds'}`,
			outputs: map[string]string{"ClientIds": `["c1", "c2"]`}, want: []Item{{"c1", "c1"}, {"c2", "c2"}}},
		{name: "from a CEL list", forEach: `{from: 'tasks["count-rows"].outputs.ClientIds.split(",").map(s, s.trim())'}`,
			outputs: map[string]string{"ClientIds": "c1, c2"}, want: []Item{{"c1", "c1"}, {"c2", "c2"}}},
		{name: "from a list literal", forEach: `{from: '[1, params.mode, [true]]'}`,
			want: []Item{{int64(1), "1"}, {"full", "full"}, {[]any{true}, "[true]"}}},
		{name: "from text that is not JSON", forEach: `{from: 'tasks["count-rows"].outputs.ClientIds'}`,
			outputs: map[string]string{"ClientIds": "c1,c2"}, wantErr: `task "t": for_each.from: tasks["count-rows"].outputs.ClientIds: not a JSON list`},
		{name: "from JSON that is not a list", forEach: `{from: 'tasks["count-rows"].outputs.ClientIds'}`,
			outputs: map[string]string{"ClientIds": `{"a": 1}`}, wantErr: "not a JSON list"},
		{name: "from a map", forEach: `{from: 'tasks["count-rows"].outputs'}`,
			outputs: map[string]string{}, wantErr: "must give a list or a string holding a JSON list, got map"},
		{name: "from a missing output", forEach: `{from: 'tasks["count-rows"].outputs.ClientIds'}`,
			outputs: map[string]string{}, wantErr: "no such key: ClientIds"},
		{name: "too many items", forEach: "{param: ids}", params: map[string]string{"ids": strings.Repeat("a,", MaxItems+1)},
			wantErr: "the limit is 100000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, x := exprJob(t, "    for_each: "+tc.forEach+"\n    run: [x, \"${{ item }}\"]\n")
			v := vars(tc.outputs)
			if tc.params != nil {
				v.Params = tc.params
			}
			got, err := x.ForEachItems("t", v)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ForEachItems() = %v, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ForEachItems() error: %v", err)
			}
			if len(tc.want) == 0 && len(got) == 0 {
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ForEachItems() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestForEachItemsPlainTask(t *testing.T) {
	t.Parallel()
	_, x := exprJob(t, "    run: [x]\n")
	if _, err := x.ForEachItems("t", nil); err == nil || !strings.Contains(err.Error(), `task "t" has no for_each`) {
		t.Errorf("ForEachItems(plain task) error = %v", err)
	}
}

func TestExpand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		arg     string
		item    any
		index   int
		outputs map[string]string
		want    string
		wantErr string
	}{
		{name: "literal", arg: "--full", want: "--full"},
		{name: "param", arg: "LoadDate;${{ params.mode }}", want: "LoadDate;full"},
		{name: "two placeholders", arg: "${{params.mode}}-${{ params.n }}", want: "full-7"},
		{name: "output", arg: "--rows=${{ tasks[\"count-rows\"].outputs.RowCount }}", outputs: map[string]string{"RowCount": "12"}, want: "--rows=12"},
		{name: "string item", arg: "${{ item }}", item: "c1", want: "c1"},
		{name: "map item", arg: "--id=${{ item.id }} --name=${{ item.name }}", item: map[string]any{"id": int64(42), "name": "acme"}, want: "--id=42 --name=acme"},
		{name: "whole map item as JSON", arg: "${{ item }}", item: map[string]any{"b": int64(1), "a": "<x>"}, want: `{"a":"<x>","b":1}`},
		{name: "item read back with UseNumber", arg: "${{ item + 1 }}", item: json.Number("41"), want: "42"},
		{name: "index", arg: "part-${{ index }}", index: 3, want: "part-3"},
		{name: "int arithmetic", arg: "${{ int(params.n) * 6 }}", want: "42"},
		{name: "double", arg: "${{ double(params.n) / 2.0 }}", want: "3.5"},
		{name: "whole double", arg: "${{ 3.0 }}", want: "3"},
		{name: "uint", arg: "${{ 7u }}", want: "7"},
		{name: "bool", arg: "${{ params.mode == 'full' }}", want: "true"},
		{name: "list", arg: "${{ [params.mode, 1, true] }}", want: `["full",1,true]`},
		{name: "map", arg: "${{ {'k': params.mode} }}", want: `{"k":"full"}`},
		{name: "null", arg: "[${{ null }}]", want: "[]"},
		{name: "bytes", arg: "${{ b'abc' }}", want: "abc"},
		{name: "duration", arg: "${{ duration('90s') }}", want: "1m30s"},
		{name: "timestamp", arg: "${{ timestamp('2026-11-21T10:00:00Z') }}", want: "2026-11-21T10:00:00Z"},
		{name: "escaped placeholder", arg: "$${{ params.mode }} ${{ params.mode }}", want: "${{ params.mode }} full"},
		{name: "no shell", arg: "${{ tasks[\"count-rows\"].outputs.Name }}", outputs: map[string]string{"Name": "x; rm -rf / $(id) `id` \"'"},
			want: "x; rm -rf / $(id) `id` \"'"},
		{name: "missing output", arg: "${{ tasks[\"count-rows\"].outputs.Nope }}", outputs: map[string]string{},
			wantErr: `task "t": run[1]: tasks["count-rows"].outputs.Nope: no such key: Nope`},
		{name: "conversion error", arg: "${{ int(params.mode) }}", wantErr: `task "t": run[1]: int(params.mode): `},
		{name: "missing item field", arg: "${{ item.id }}", item: map[string]any{}, wantErr: "no such key: id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, x := exprJob(t, fmt.Sprintf("    for_each: {items: [a]}\n    run: [prog, %q]\n", tc.arg))
			v := vars(tc.outputs)
			v.Item, v.Index = tc.item, tc.index
			argv, _, _, err := x.Expand("t", v)
			if tc.wantErr != "" {
				var ee *EvalError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &ee) {
					t.Fatalf("Expand() = %q, %v; want *EvalError containing %q", argv, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Expand() error: %v", err)
			}
			if want := []string{"prog", tc.want}; !cmp.Equal(argv, want) {
				t.Errorf("Expand() argv = %q, want %q", argv, want)
			}
		})
	}
}

func TestExpandEnvAndDir(t *testing.T) {
	t.Parallel()
	_, x := exprJob(t, `    run: ["${{ params.mode }}.sh", plain]
    env:
      MODE: ${{ params.mode }}
      ROWS: "${{ tasks['count-rows'].outputs.RowCount }} rows"
      FIXED: "1"
    working_dir: /data/${{ params.mode }}
`)
	argv, env, dir, err := x.Expand("t", vars(map[string]string{"RowCount": "12"}))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"full.sh", "plain"}; !cmp.Equal(argv, want) {
		t.Errorf("argv = %q, want %q", argv, want)
	}
	if want := map[string]string{"MODE": "full", "ROWS": "12 rows", "FIXED": "1"}; !cmp.Equal(env, want) {
		t.Errorf("env = %q, want %q", env, want)
	}
	if want := "/data/full"; dir != want {
		t.Errorf("dir = %q, want %q", dir, want)
	}
	_, _, _, err = x.Expand("t", vars(map[string]string{}))
	var ee *EvalError
	if !errors.As(err, &ee) || ee.Field != "env.ROWS" || ee.Task != "t" {
		t.Errorf("Expand() with a missing output: error = %v, want *EvalError for env.ROWS", err)
	}
}

// TestExpandSecrets: a secret:NAME value written in the job file is a
// secret reference, left out of the expanded env; a value a placeholder
// produces is literal even when it reads "secret:...", so a run param
// cannot make a task read a secret.
func TestExpandSecrets(t *testing.T) {
	t.Parallel()
	_, x := exprJob(t, `    run: [prog]
    env:
      PASSWORD: secret:dbpass
      TOKEN: secret:api.token-2
      INJECTED: ${{ params.which }}
      LITERAL: ${{ "secret:dbpass" }}
`)
	v := vars(nil)
	v.Params["which"] = "secret:other"
	_, env, _, err := x.Expand("t", v)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"INJECTED": "secret:other", "LITERAL": "secret:dbpass"}; !cmp.Equal(env, want) {
		t.Errorf("env = %q, want %q (secret references left out, placeholder values literal)", env, want)
	}
	if got, want := x.Secrets("t"), map[string]string{"PASSWORD": "dbpass", "TOKEN": "api.token-2"}; !cmp.Equal(got, want) {
		t.Errorf("Secrets() = %q, want %q", got, want)
	}
	if got := x.Secrets("count-rows"); got != nil {
		t.Errorf("Secrets(count-rows) = %q, want nil", got)
	}
}

func TestExpandEmptyProgram(t *testing.T) {
	t.Parallel()
	_, x := exprJob(t, "    run: [\"${{ params.s }}\", arg]\n")
	_, _, _, err := x.Expand("t", vars(nil))
	if err == nil || !strings.Contains(err.Error(), `task "t": run[0]: ${{ params.s }}: the program to run expands to an empty string`) {
		t.Errorf("Expand() error = %v", err)
	}
}

func TestExprsConcurrent(t *testing.T) {
	t.Parallel()
	_, x := exprJob(t, `    when: int(tasks["count-rows"].outputs.RowCount) > 0
    for_each: {from: 'tasks["count-rows"].outputs.Ids'}
    run: [p, "${{ item }}-${{ index }}"]
`)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			v := vars(map[string]string{"RowCount": fmt.Sprint(g + 1), "Ids": fmt.Sprintf(`["a%d", "b%d"]`, g, g)})
			for range 50 {
				ok, err := x.TaskWhen("t", v)
				if err != nil || !ok {
					errs <- fmt.Errorf("TaskWhen() = %v, %v", ok, err)
					return
				}
				items, err := x.ForEachItems("t", v)
				if err != nil || len(items) != 2 {
					errs <- fmt.Errorf("ForEachItems() = %v, %v", items, err)
					return
				}
				v := *v
				v.Item, v.Index = items[1].Value, 1
				argv, _, _, err := x.Expand("t", &v)
				if want := fmt.Sprintf("b%d-1", g); err != nil || argv[1] != want {
					errs <- fmt.Errorf("Expand() = %q, %v; want %q", argv, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCompileExprsChangedSpec(t *testing.T) {
	t.Parallel()
	s, _ := exprJob(t, "    run: [x]\n")
	s.Task("t").When = "tasks.nope.state == 1"
	_, err := CompileExprs(s)
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("CompileExprs() error = %v, want *Error", err)
	}
	checkErrors(t, e, []wantErr{{0, "t", "tasks[t].when", `refers to unknown task "nope"`}})
}

func TestSplitTemplate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    []rawSegment
		wantErr string
	}{
		{"", []rawSegment{{text: ""}}, ""},
		{"plain }} text", []rawSegment{{text: "plain }} text"}}, ""},
		{"a${{x}}b", []rawSegment{{text: "a"}, {text: "x", expr: true}, {text: "b"}}, ""},
		{"${{ x }}${{ y }}", []rawSegment{{text: " x ", expr: true}, {text: " y ", expr: true}}, ""},
		{"$${{ x }}", []rawSegment{{text: "${{ x }}"}}, ""},
		{"$$${{ x }}", []rawSegment{{text: "$${{ x }}"}}, ""},
		{"a ${{ x", nil, "unclosed placeholder"},
		{"${{   }}", nil, "empty placeholder"},
	}
	for _, tc := range tests {
		got, err := splitTemplate(tc.in)
		if tc.wantErr != "" {
			if !strings.Contains(err, tc.wantErr) {
				t.Errorf("splitTemplate(%q) error = %q, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != "" {
			t.Errorf("splitTemplate(%q) error = %q", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(rawSegment{})); diff != "" {
			t.Errorf("splitTemplate(%q) mismatch (-want +got):\n%s", tc.in, diff)
		}
	}
}
