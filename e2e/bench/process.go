package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// stopTimeout is how long a process has to exit after SIGTERM before it is
// killed.
const stopTimeout = 15 * time.Second

// linesBuffer is how many stdout lines of a process wait to be read.
const linesBuffer = 64

// process is a child process the harness started. Its stderr (and stdout,
// unless lines is used) goes to a log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
	// lines receives the process's stdout lines when it was started with
	// startProcessLines; it is closed at EOF. Lines are dropped while it
	// holds linesBuffer unread ones, so an unread process never blocks.
	lines chan string
}

// startProcess starts bin with args, logging to dir/name.log.
func startProcess(dir, name, bin string, args ...string) (*process, error) {
	return start(dir, name, false, bin, args...)
}

// startProcessLines is startProcess with stdout delivered line by line on
// p.lines instead of the log file.
func startProcessLines(dir, name, bin string, args ...string) (*process, error) {
	return start(dir, name, true, bin, args...)
}

func start(dir, name string, pipe bool, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = f
	cmd.SysProcAttr = sysProcAttr()
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	var stdout io.ReadCloser
	if pipe {
		if stdout, err = cmd.StdoutPipe(); err != nil {
			_ = f.Close() // nothing was written to it
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		p.lines = make(chan string, linesBuffer)
	} else {
		cmd.Stdout = f
	}
	if err := cmd.Start(); err != nil {
		_ = f.Close() // nothing was written to it
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	var scanned chan struct{}
	if pipe {
		scanned = make(chan struct{})
		go func() {
			defer close(scanned)
			defer close(p.lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				select {
				case p.lines <- sc.Text():
				default:
				}
			}
		}()
	}
	go func() {
		if scanned != nil {
			// Wait closes the pipe: read it to the end first.
			<-scanned
		}
		p.err = cmd.Wait()
		// The process wrote through its own descriptor, straight to the
		// file: closing ours cannot lose any of it.
		_ = f.Close()
		close(p.done)
	}()
	return p, nil
}

// pid returns the process id.
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports the process's exit as an error naming its log, or nil
// while it runs.
func (p *process) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v); see %s:\n%s", p.name, p.err, p.log, p.logTail())
	default:
		return nil
	}
}

// logTail returns the end of the process's log.
func (p *process) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// stop sends SIGTERM and waits for the process to exit, killing it after
// stopTimeout. It returns the process's exit error unless the process was
// killed.
func (p *process) stop() error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
		return p.err
	case <-t.C:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.name, stopTimeout)
}

// waitFor polls cond every 20ms until it returns true, returns an error,
// or timeout passes. It is for conditions in other processes, which cannot
// signal the harness.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
			}
			return ctx.Err()
		}
	}
}

// writeFileAtomic writes b to path through a temporary file in the same
// directory.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// On failure the temporary file is removed as well as can be; the
	// error returned is the one that made the write fail.
	_, werr := f.Write(b)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
