package job

import (
	"fmt"
	"strings"
	"testing"
)

// bigJob returns a job file of n tasks: stages of 50 tasks, each task
// also needing one task of the stage before with a when condition and
// placeholders in its run and env.
func bigJob(n int) []byte {
	var b strings.Builder
	b.WriteString("name: big\nparams: {load_date: \"2026-11-21\", mode: full}\nmax_parallel: 8\ntasks:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - name: task-%04d\n    stage: %d\n", i, i/50+1)
		if i >= 50 {
			up := i - 50
			fmt.Fprintf(&b, "    needs: [{task: task-%04d, status: completed}]\n", up)
			fmt.Fprintf(&b, "    when: tasks[\"task-%04d\"].state == \"succeeded\" && params.mode == \"full\"\n", up)
		}
		fmt.Fprintf(&b, "    runs_on: {labels: {role: etl}}\n")
		fmt.Fprintf(&b, "    run: [/opt/etl/step.sh, --date, \"${{ params.load_date }}\", --task, \"%d\"]\n", i)
		fmt.Fprintf(&b, "    env: {MODE: \"${{ params.mode }}\"}\n    retries: 2\n    timeout: 30m\n")
	}
	return []byte(b.String())
}

func BenchmarkParse(b *testing.B) {
	src := bigJob(1000)
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(src); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTaskWhen(b *testing.B) {
	s, err := Parse([]byte(`name: bench
params: {mode: full}
tasks:
  - name: count-rows
    run: [x]
  - name: notify-empty
    needs: [count-rows]
    when: int(tasks["count-rows"].outputs.RowCount) == 0 && params.mode == "full"
    run: [x]
`))
	if err != nil {
		b.Fatal(err)
	}
	x, err := CompileExprs(s)
	if err != nil {
		b.Fatal(err)
	}
	v := &Vars{Params: map[string]string{"mode": "full"}, Tasks: map[string]TaskVars{}}
	for i := range 1000 {
		v.Tasks[fmt.Sprintf("other-%d", i)] = TaskVars{State: "succeeded"}
	}
	v.Tasks["count-rows"] = TaskVars{State: "succeeded", Outputs: map[string]string{"RowCount": "0"}}
	b.ReportAllocs()
	for b.Loop() {
		ok, err := x.TaskWhen("notify-empty", v)
		if err != nil || !ok {
			b.Fatal(ok, err)
		}
	}
}

func TestBigJob(t *testing.T) {
	t.Parallel()
	s, err := Parse(bigJob(1000))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(s.Upstream("task-0999")); got != 950 {
		t.Errorf("len(Upstream(task-0999)) = %d, want 950 (every task of the lower stages)", got)
	}
}
