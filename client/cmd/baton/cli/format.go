package cli

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// Output formats of -o/--output.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// jsonDoc renders one response as an indented JSON document. Field names
// and unpopulated fields follow the REST gateway's defaults, so the CLI's
// JSON and the gateway's look alike.
var jsonDoc = protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}

// jsonLine renders one message on a single line, for streams of events.
var jsonLine = protojson.MarshalOptions{EmitUnpopulated: true}

func writeJSON(w io.Writer, m proto.Message) error {
	b, err := jsonDoc.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func writeJSONLine(w io.Writer, m proto.Message) error {
	b, err := jsonLine.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// humanDuration renders d briefly: 350ms, 1.2s, 3m04s, 2h05m, 3d04h.
func humanDuration(d time.Duration) string {
	if d < 0 {
		return "-" + humanDuration(-d)
	}
	switch {
	case d < 100*time.Millisecond:
		return fmt.Sprintf("%dms", d.Round(time.Millisecond).Milliseconds())
	case d.Round(100*time.Millisecond) < time.Minute:
		return strconv.FormatFloat(d.Round(100*time.Millisecond).Seconds(), 'f', 1, 64) + "s"
	case d.Round(time.Second) < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm%02ds", d/time.Minute, d%time.Minute/time.Second)
	case d.Round(time.Minute) < 24*time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", d/time.Hour, d%time.Hour/time.Minute)
	default:
		d = d.Round(time.Hour)
		return fmt.Sprintf("%dd%02dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	}
}

// span returns the time from start to end, or false when either is unset.
func span(start, end *timestamppb.Timestamp) (time.Duration, bool) {
	if start == nil || end == nil {
		return 0, false
	}
	return end.AsTime().Sub(start.AsTime()), true
}

// runState names a run state in lower case: "running", "failed".
func runState(s batonv1.RunState) string {
	return enumWord(s.String(), "RUN_STATE_")
}

// taskState names a task state in lower case: "succeeded", "blocked".
func taskState(s batonv1.TaskState) string {
	return enumWord(s.String(), "TASK_STATE_")
}

func agentState(s batonv1.AgentState) string {
	return enumWord(s.String(), "AGENT_STATE_")
}

func enumWord(name, prefix string) string {
	w := strings.ToLower(strings.TrimPrefix(name, prefix))
	if w == "unspecified" {
		return "unknown"
	}
	return w
}

// taskDone reports whether a task instance in state s will not change
// again in this run without a restart. Blocked counts: nothing unblocks it
// until the run is restarted.
func taskDone(s batonv1.TaskState) bool {
	switch s {
	case batonv1.TaskState_TASK_STATE_SUCCEEDED, batonv1.TaskState_TASK_STATE_FAILED,
		batonv1.TaskState_TASK_STATE_SKIPPED, batonv1.TaskState_TASK_STATE_BLOCKED,
		batonv1.TaskState_TASK_STATE_CANCELLED, batonv1.TaskState_TASK_STATE_LOST:
		return true
	}
	return false
}

// instance identifies a task instance within a run.
type instance struct {
	task string
	item int32 // -1 for a plain task
}

func newInstance(task string, item *int32) instance {
	in := instance{task: task, item: -1}
	if item != nil {
		in.item = *item
	}
	return in
}

// String renders the instance as users write it: "load" or "per-client[3]".
func (in instance) String() string {
	if in.item < 0 {
		return in.task
	}
	return fmt.Sprintf("%s[%d]", in.task, in.item)
}

// stateCounts renders how many task instances are in each state, in the
// states' natural order: "3 succeeded, 1 failed, 1 blocked".
func stateCounts(tasks []*batonv1.TaskRun) string {
	counts := make(map[batonv1.TaskState]int)
	for _, t := range tasks {
		counts[t.GetState()]++
	}
	var parts []string
	for _, s := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%d %s", counts[s], taskState(s)))
	}
	if len(parts) == 0 {
		return "no tasks"
	}
	return strings.Join(parts, ", ")
}

// formatLabels renders labels sorted by key: "dc=east,role=ssis".
func formatLabels(labels map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

// lastLines returns the last n lines of s, without a trailing empty line.
func lastLines(s string, n int) []string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil
	}
	return lines[max(0, len(lines)-n):]
}

// plural renders "1 task" or "3 tasks".
func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// table writes aligned columns, without trailing blanks. Rows are
// buffered until flush.
type table struct {
	w   io.Writer
	buf bytes.Buffer
	tw  *tabwriter.Writer
	err error // the first failed row write, returned by flush
}

// newTable starts a table on w, with a header row unless header is empty.
func newTable(w io.Writer, header ...string) *table {
	t := &table{w: w}
	t.tw = tabwriter.NewWriter(&t.buf, 0, 0, 2, ' ', 0)
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		// A tab or newline inside a cell would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(c)
	}
	if _, err := fmt.Fprintln(t.tw, strings.Join(cells, "\t")); err != nil && t.err == nil {
		t.err = err
	}
}

func (t *table) flush() error {
	if t.err != nil {
		return t.err
	}
	if err := t.tw.Flush(); err != nil {
		return err
	}
	var out strings.Builder
	for line := range strings.Lines(t.buf.String()) {
		out.WriteString(strings.TrimRight(line, " \n") + "\n")
	}
	t.buf.Reset()
	_, err := io.WriteString(t.w, out.String())
	return err
}

// clock renders times in one zone, relative to one notion of now.
type clock struct {
	now func() time.Time
	loc *time.Location
}

// timestamp renders ts as "2006-01-02 15:04:05 MST", or "-" when unset.
func (c clock) timestamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().In(c.loc).Format("2006-01-02 15:04:05 MST")
}

// timeOfDay renders ts as "15:04:05", or now when unset.
func (c clock) timeOfDay(ts *timestamppb.Timestamp) string {
	t := c.now()
	if ts != nil {
		t = ts.AsTime()
	}
	return t.In(c.loc).Format("15:04:05")
}

// ago renders how long before now ts was: "4s ago", or "never".
func (c clock) ago(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "never"
	}
	d := c.now().Sub(ts.AsTime())
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", d/time.Second)
	}
	return humanDuration(d) + " ago"
}

// elapsed is the time from start to end, or to now for something still
// going (end unset). It returns "" when start is unset.
func (c clock) elapsed(start, end *timestamppb.Timestamp) string {
	if start == nil {
		return ""
	}
	if end == nil {
		return humanDuration(c.now().Sub(start.AsTime())) + "+"
	}
	d, _ := span(start, end)
	return humanDuration(d)
}

// orDash returns s, or "-" when s is empty.
func orDash(s string) string { return cmp.Or(s, "-") }
