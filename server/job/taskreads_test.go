package job

import (
	"slices"
	"testing"
)

func TestTaskReads(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		src     string
		want    []string
		wantAll bool
	}{
		{"no expressions", "name: j\ntasks:\n  - {name: a, run: [x]}\n  - {name: b, needs: [a], run: [x]}\n", nil, false},
		{"when, edge when, from and placeholders", `
name: j
tasks:
  - {name: a, run: [x]}
  - {name: b, run: [x]}
  - {name: c, run: [x]}
  - {name: d, run: [x]}
  - {name: w, needs: [a], when: 'tasks["a"].state == "succeeded"', run: [x]}
  - {name: e, needs: [{task: b, when: 'tasks.b.outputs.N == "1"'}], run: [x]}
  - {name: f, needs: [c], for_each: {from: 'tasks["c"].outputs.L'}, run: [x]}
  - {name: g, needs: [d], run: [x, '${{ tasks["d"].outputs.V }}']}
`, []string{"a", "b", "c", "d"}, false},
		{"a dynamic index reads every task", `
name: j
params: {t: a}
tasks:
  - {name: a, run: [x]}
  - {name: b, needs: [a], when: 'tasks[params.t].state == "succeeded"', run: [x]}
`, nil, true},
	}
	for _, tc := range tests {
		spec, err := Parse([]byte(tc.src))
		if err != nil {
			t.Fatalf("%s: Parse: %v", tc.name, err)
		}
		x, err := CompileExprs(spec)
		if err != nil {
			t.Fatalf("%s: CompileExprs: %v", tc.name, err)
		}
		got, all := x.TaskReads()
		if !slices.Equal(got, tc.want) || all != tc.wantAll {
			t.Errorf("%s: TaskReads() = %v, %v; want %v, %v", tc.name, got, all, tc.want, tc.wantAll)
		}
	}
}
