package main

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestSmoke runs the whole benchmark with tiny sizes, with security off
// and on, so that make test catches a harness that no longer works against
// the current batond, agent and simagent.
func TestSmoke(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		secure bool
		// want are lines of the report that say which mode it measured
		// and where the other one is.
		want []string
	}{
		{name: "security off", want: []string{"# Benchmarks\n", "**" + securityOff + ".**", "[benchmarks-secure.md](benchmarks-secure.md)"}},
		{name: "security on", secure: true, want: []string{"# Benchmarks with security on\n", "**" + securityOn + ".**", "[benchmarks.md](benchmarks.md)", "### Security on"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			md := smoke(t, tc.secure)
			for _, s := range tc.want {
				if !strings.Contains(md, s) {
					t.Errorf("report lacks %q:\n%s", s, md)
				}
			}
		})
	}
}

// smoke runs the benchmark with SmokeConfig, checks its result and report
// and returns the report.
func smoke(t *testing.T, secure bool) string {
	cfg := SmokeConfig()
	cfg.Secure = secure
	cfg.Repo = filepath.Join("..", "..")
	cfg.Dir = t.TempDir()
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("benchmark took %s", time.Since(began))

	if len(res.Spawn) != cfg.Reps || rate(res.Spawn[0]) <= 0 {
		t.Errorf("spawn ceiling samples = %+v, want %d with a positive rate", res.Spawn, cfg.Reps)
	}
	var keys []string
	for _, r := range res.Rows {
		keys = append(keys, r.shape.key)
		if len(r.samples) != cfg.Reps {
			t.Errorf("%s: %d samples, want %d", r.shape.key, len(r.samples), cfg.Reps)
			continue
		}
		s := r.samples[0]
		if s.Wall <= 0 || s.Peak <= 0 || s.RSSAfter <= 0 || s.RSSBefore <= 0 {
			t.Errorf("%s: sample %+v lacks a time or an RSS", r.shape.key, s)
		}
		if r.shape.kind == kindJob {
			if s.Tasks != r.shape.tasks || s.Attempts != r.shape.tasks {
				t.Errorf("%s: %d tasks in %d attempts, want %d in as many", r.shape.key, s.Tasks, s.Attempts, r.shape.tasks)
			}
			if !s.HasDisp {
				t.Errorf("%s: no dispatch times", r.shape.key)
			}
		}
	}
	want := []string{"fanout", "chain", "foreach", "ceiling", "fanout-full", "chain-full", "idle"}
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}

	md := res.Markdown()
	for _, s := range []string{"| date |", "| commit |", "| machine |", "| store |", "not evaluated", "## How it is measured"} {
		if !strings.Contains(md, s) {
			t.Errorf("report lacks %q:\n%s", s, md)
		}
	}
	// Every shape has a row in the throughput table (idle excepted) and in
	// the resources table, with a number in every cell.
	rows := map[string]int{}
	for line := range strings.Lines(md) {
		cells := tableCells(line)
		if len(cells) == 0 {
			continue
		}
		label := cells[0]
		for _, r := range res.Rows {
			if label != r.shape.label {
				continue
			}
			rows[r.shape.key]++
			for i, c := range cells[1:] {
				if !numeric(c) {
					t.Errorf("%s: cell %d is %q, want a number:\n%s", r.shape.key, i+1, c, line)
				}
			}
		}
	}
	for _, r := range res.Rows {
		want := 2
		if r.shape.kind == kindIdle {
			want = 1
		}
		if rows[r.shape.key] != want {
			t.Errorf("report has %d table rows for %s, want %d:\n%s", rows[r.shape.key], r.shape.key, want, md)
		}
	}
	return md
}

// tableCells splits a Markdown table row into its trimmed cells, or
// returns nil for any other line.
func tableCells(line string) []string {
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "|") || !strings.HasSuffix(line, "|") {
		return nil
	}
	parts := strings.Split(line[1:len(line)-1], "|")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

// numeric reports whether a cell holds a number, or two as "a / b".
func numeric(cell string) bool {
	for part := range strings.SplitSeq(cell, " / ") {
		if _, err := strconv.ParseFloat(part, 64); err != nil {
			return false
		}
	}
	return true
}

func TestCLIRejectsBadFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "zero reps", args: []string{"-reps", "0"}, want: "reps: must be at least 1"},
		{name: "uneven foreach", args: []string{"-foreach-parallel", "10", "-foreach-agents", "3"}, want: "foreach-parallel: 10 does not split evenly over 3 agents"},
		{name: "argument", args: []string{"extra"}, want: `unexpected argument "extra"`},
		{name: "unknown flag", args: []string{"-fanuot", "3"}, want: "flag provided but not defined: -fanuot"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stderr bytes.Buffer
			if code := cli(t.Context(), tc.args, &stderr); code != 2 {
				t.Errorf("cli(%q) = %d, want 2", tc.args, code)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("cli(%q) printed %q, want it to contain %q", tc.args, stderr.String(), tc.want)
			}
		})
	}
}

func ts(ms int) time.Time { return time.UnixMilli(int64(ms)) }

func TestReadyToStarted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		starts, ends []int // milliseconds
		parallel     int
		want         []time.Duration
	}{
		{
			name:   "chain: each start waits for the previous end",
			starts: []int{3, 10, 20}, ends: []int{8, 15, 25}, parallel: 1,
			want: []time.Duration{3 * time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond},
		},
		{
			name:   "two slots: the third start waits for the first end",
			starts: []int{1, 2, 12, 13}, ends: []int{10, 11, 20, 21}, parallel: 2,
			want: []time.Duration{time.Millisecond, 2 * time.Millisecond, 2 * time.Millisecond, 2 * time.Millisecond},
		},
		{
			name:   "unsorted input",
			starts: []int{12, 1, 13, 2}, ends: []int{21, 11, 20, 10}, parallel: 2,
			want: []time.Duration{time.Millisecond, 2 * time.Millisecond, 2 * time.Millisecond, 2 * time.Millisecond},
		},
		{
			name:   "more slots than attempts",
			starts: []int{4, 5}, ends: []int{6, 7}, parallel: 10,
			want: []time.Duration{4 * time.Millisecond, 5 * time.Millisecond},
		},
		{
			name:   "a clock step never gives a negative latency",
			starts: []int{5, 7}, ends: []int{9, 10}, parallel: 1,
			want: []time.Duration{5 * time.Millisecond, 0},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var starts, ends []time.Time
			for _, s := range tc.starts {
				starts = append(starts, ts(s))
			}
			for _, e := range tc.ends {
				ends = append(ends, ts(e))
			}
			got := readyToStarted(ts(0), starts, ends, tc.parallel)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("readyToStarted(%v, %v, %d) (-want +got):\n%s", tc.starts, tc.ends, tc.parallel, diff)
			}
		})
	}
}

func TestPercentileAndMedian(t *testing.T) {
	t.Parallel()
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i))
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {1, 1}, {0.1, 1}} {
		if got := percentile(ds, tc.p); got != tc.want {
			t.Errorf("percentile(1..100, %v) = %d, want %d", tc.p, got, tc.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile(nil, 50) = %d, want 0", got)
	}
	for _, tc := range []struct {
		xs   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tc.xs); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.xs, got, tc.want)
		}
	}
}

func TestTopSymbols(t *testing.T) {
	t.Parallel()
	report := `# Samples: 1K of event 'cpu-clock'
#
# Overhead  Symbol                                   IPC   [IPC Coverage]
# ........  .......................................  ....................
#
     0.78%  [.] __vdso_clock_gettime                 -      -
    18.99%  [k] finish_task_switch.isra.0            -      -
     4.07%  [.] modernc.org/sqlite/lib._sqlite3VdbeExec  -      -
     2.10%  [.] pkg.collect[go.shape.struct { A int64; B string }]  -      -
`
	want := " 18.99%  [k] finish_task_switch.isra.0\n" +
		"  4.07%  [.] modernc.org/sqlite/lib._sqlite3VdbeExec\n" +
		"  2.10%  [.] pkg.collect[go.shape.struct { A int64; B string }]"
	if got := topSymbols(report, 3); got != want {
		t.Errorf("topSymbols() =\n%s\nwant\n%s", got, want)
	}
}
