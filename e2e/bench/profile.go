package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// perfTimeout bounds each exchange with perf's control descriptors.
const perfTimeout = 30 * time.Second

// profiler is `perf record` attached to one process. It starts with its
// events disabled and is switched on and off through perf's control
// descriptors, each switch acknowledged, so exactly the measured part is
// sampled.
type profiler struct {
	out  string
	cmd  *exec.Cmd
	ctl  *os.File
	ack  *bufio.Reader
	ackF *os.File
	log  bytes.Buffer
	// ended is closed when perf has exited, so that every wait sees it;
	// waitErr, cmd.Wait's error, is set before.
	ended   chan struct{}
	waitErr error
}

// startProfile attaches perf to pid, writing to out, and enables sampling
// (cpu-clock at 999 Hz, frame-pointer call graphs).
func startProfile(ctx context.Context, pid int, out string) (*profiler, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	ackR, ackW, err := os.Pipe()
	if err != nil {
		closeAll(ctlR, ctlW)
		return nil, fmt.Errorf("profile: %w", err)
	}
	p := &profiler{out: out, ctl: ctlW, ackF: ackR, ack: bufio.NewReader(ackR), ended: make(chan struct{})}
	p.cmd = exec.Command(perf, "record", "-e", "cpu-clock", "-F", "999", "-g", "-D", "-1",
		"--control", "fd:3,4", "-p", strconv.Itoa(pid), "-o", out)
	p.cmd.ExtraFiles = []*os.File{ctlR, ackW}
	p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
	p.cmd.SysProcAttr = sysProcAttr()
	err = p.cmd.Start()
	closeAll(ctlR, ackW) // perf's ends, which it inherited
	if err != nil {
		closeAll(ctlW, ackR)
		return nil, fmt.Errorf("profile: start perf: %w", err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.ended)
	}()
	if err := p.command(ctx, "enable"); err != nil {
		p.abort()
		return nil, err
	}
	return p, nil
}

// command sends a control command and waits for perf's "ack".
func (p *profiler) command(ctx context.Context, cmd string) error {
	if _, err := fmt.Fprintln(p.ctl, cmd); err != nil {
		return fmt.Errorf("profile: perf %s: %w\n%s", cmd, err, p.log.String())
	}
	got := make(chan error, 1)
	go func() {
		line, err := p.ack.ReadString('\n')
		// perf writes "ack\n" with its C string's NUL, which the next
		// read sees first.
		if err == nil && strings.Trim(line, "\x00 \n") != "ack" {
			err = fmt.Errorf("perf answered %q", line)
		}
		got <- err
	}()
	t := time.NewTimer(perfTimeout)
	defer t.Stop()
	select {
	case err := <-got:
		if err != nil {
			return fmt.Errorf("profile: perf %s: %w", cmd, err)
		}
		return nil
	case <-p.ended:
		return fmt.Errorf("profile: perf exited (%v):\n%s", p.waitErr, p.log.String())
	case <-t.C:
		return fmt.Errorf("profile: perf did not acknowledge %q within %s", cmd, perfTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop disables sampling, ends perf and writes a flat list of the hottest
// functions (self time) next to the profile, as <name>.txt. It returns the
// top of that list.
func (p *profiler) stop(ctx context.Context) (string, error) {
	err := p.command(ctx, "disable")
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	t := time.NewTimer(perfTimeout)
	defer t.Stop()
	select {
	case <-p.ended:
		// perf exits with the signal's status after writing its file.
		var ee *exec.ExitError
		if p.waitErr != nil && !errors.As(p.waitErr, &ee) {
			err = errors.Join(err, p.waitErr)
		}
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.ended // waitErr only says perf was killed
		err = errors.Join(err, fmt.Errorf("profile: perf did not exit within %s", perfTimeout))
	}
	closeAll(p.ctl, p.ackF)
	if err != nil {
		return "", err
	}
	rep := exec.CommandContext(ctx, "perf", "report", "-i", p.out, "--stdio", "--no-children",
		"--sort", "symbol", "-g", "none", "--percent-limit", "0.5")
	var stdout, stderr bytes.Buffer
	rep.Stdout, rep.Stderr = &stdout, &stderr
	if err := rep.Run(); err != nil {
		return "", fmt.Errorf("profile: perf report: %w\n%s", err, stderr.String())
	}
	if err := os.WriteFile(strings.TrimSuffix(p.out, ".perf.data")+".txt", stdout.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("profile: %w", err)
	}
	return topSymbols(stdout.String(), 8), nil
}

// perfLine is one line of `perf report --stdio -g none`: the share, the
// kind ([.] user, [k] kernel) and the symbol, followed by two or more
// spaces and further columns.
var perfLine = regexp.MustCompile(`^\s*([0-9.]+)%\s+(\[.\])\s+(.*?)(\s{2,}|$)`)

// topSymbols returns the n largest entries of a perf report, one per line.
func topSymbols(report string, n int) string {
	type entry struct {
		pct  float64
		line string
	}
	var es []entry
	for line := range strings.Lines(report) {
		m := perfLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		pct, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			continue
		}
		es = append(es, entry{pct, fmt.Sprintf("%6.2f%%  %s %s", pct, m[2], m[3])})
	}
	slices.SortStableFunc(es, func(a, b entry) int { return cmp.Compare(b.pct, a.pct) })
	var out []string
	for _, e := range es[:min(n, len(es))] {
		out = append(out, e.line)
	}
	return strings.Join(out, "\n")
}

// abort ends perf without a report.
func (p *profiler) abort() {
	_ = p.cmd.Process.Kill()
	<-p.ended // no report is wanted, so neither is perf's exit error
	closeAll(p.ctl, p.ackF)
}

// closeAll closes ends of perf's control pipes. Their Close errors are
// dropped: closing a pipe loses nothing written to it, and a command perf
// missed shows as a missing "ack", which [profiler.command] reports.
func closeAll(fs ...*os.File) {
	for _, f := range fs {
		_ = f.Close()
	}
}

// profiles are the profilers of one measurement: batond's and, when the
// shape has agents, the first agent process's.
type profiles struct {
	batond, agent *profiler
}

// startProfiles records batond as dir/<key>.perf.data and the first agent
// process as dir/<key>-agent.perf.data.
func startProfiles(ctx context.Context, cl *cluster, dir, key string) (*profiles, error) {
	b, err := startProfile(ctx, cl.batond.pid(), filepath.Join(dir, key+".perf.data"))
	if err != nil {
		return nil, err
	}
	ps := &profiles{batond: b}
	if agents := cl.agentProcs(); len(agents) > 0 {
		if ps.agent, err = startProfile(ctx, agents[0].pid(), filepath.Join(dir, key+"-agent.perf.data")); err != nil {
			b.abort()
			return nil, err
		}
	}
	return ps, nil
}

// stop stops every profiler and returns the top of batond's profile.
func (ps *profiles) stop(ctx context.Context) (string, error) {
	top, err := ps.batond.stop(ctx)
	if ps.agent != nil {
		_, aerr := ps.agent.stop(ctx)
		err = errors.Join(err, aerr)
	}
	return top, err
}

// abort ends every profiler without a report.
func (ps *profiles) abort() {
	ps.batond.abort()
	if ps.agent != nil {
		ps.agent.abort()
	}
}
