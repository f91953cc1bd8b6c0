package job_test

import (
	"fmt"

	"github.com/batonhq/baton/server/job"
)

func ExampleParse() {
	_, err := job.Parse([]byte(`name: nightly
tasks:
  - name: count-rows
    run: [sqlcmd, -b, -i, count.sql]
  - name: notify
    needs: [cout-rows]
    run: [notify.sh]
    timeout: 30
`))
	fmt.Println(err)
	// Output:
	// line 6: task "notify": needs[0].task: unknown task "cout-rows" (did you mean "count-rows"?)
	// line 8: task "notify": timeout: duration 30 needs a unit, like "30s" or "30m"
}

func ExampleExprs() {
	spec, err := job.Parse([]byte(`name: per-client
params: {load_date: "2026-11-21"}
tasks:
  - name: list-clients
    run: [list-clients.sh]
  - name: load-client
    needs: [list-clients]
    when: int(tasks["list-clients"].outputs.Count) > 0
    for_each: {from: 'tasks["list-clients"].outputs.Clients'}
    run: [load-client, "--id=${{ item.id }}", "--date=${{ params.load_date }}"]
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	x, err := job.CompileExprs(spec)
	if err != nil {
		fmt.Println(err)
		return
	}
	vars := &job.Vars{
		Params: spec.Params,
		Tasks: map[string]job.TaskVars{"list-clients": {
			State:   "succeeded",
			Outputs: map[string]string{"Count": "2", "Clients": `[{"id": 101}, {"id": 102}]`},
		}},
	}
	ok, err := x.TaskWhen("load-client", vars)
	fmt.Println("when:", ok, err)
	items, err := x.ForEachItems("load-client", vars)
	if err != nil {
		fmt.Println(err)
		return
	}
	for i, it := range items {
		v := *vars
		v.Item, v.Index = it.Value, i
		argv, _, _, err := x.Expand("load-client", &v)
		fmt.Println(it.Text, argv, err)
	}
	// Output:
	// when: true <nil>
	// {"id":101} [load-client --id=101 --date=2026-11-21] <nil>
	// {"id":102} [load-client --id=102 --date=2026-11-21] <nil>
}
