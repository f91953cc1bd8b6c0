//go:build unix

package runner

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// cconn is one connection to the runner.
type cconn struct {
	nc net.Conn
	br *bufio.Reader
	// envBase says the runner's environment is the client's base
	// environment: starts may send only what follows it.
	envBase bool
}

// write sends one frame; the caller holds Client.mu.
func (cc *cconn) write(b []byte) error {
	_ = cc.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := cc.nc.Write(b); err != nil {
		_ = cc.nc.Close() // the write error is the one to report
		return err
	}
	return nil
}

// connect reaches this version's runner, starting one when none answers.
func (c *Client) connect(ctx context.Context) (*cconn, *welcome, error) {
	var lastErr error
	for try := range connectAttempts {
		cc, w, err := c.dial()
		if err == nil {
			return cc, w, nil
		}
		if errors.Is(err, errRefused) {
			return nil, nil, err
		}
		lastErr = err
		err = c.spawn(ctx)
		if err == nil {
			continue
		}
		if !errors.Is(err, errBusy) {
			return nil, nil, err
		}
		// A runner holds the lock but does not answer: it is exiting.
		lastErr = err
		t := time.NewTimer(time.Duration(10<<min(try, 5)) * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		}
	}
	return nil, nil, fmt.Errorf("cannot reach a runner: %w", lastErr)
}

// sockPath returns where this version's runner listens.
func (c *Client) sockPath() (string, error) {
	path := filepath.Join(c.dir, sockName)
	if len(path) <= maxSockPath {
		return path, nil
	}
	d, err := os.ReadFile(filepath.Join(c.dir, sockDirName))
	if err != nil {
		return "", fmt.Errorf("find runner socket: %w", err)
	}
	return filepath.Join(string(d), sockName), nil
}

// dial connects to the runner and does the handshake.
func (c *Client) dial() (*cconn, *welcome, error) {
	path, err := c.sockPath()
	if err != nil {
		return nil, nil, err
	}
	nc, err := net.DialTimeout("unix", path, handshakeTimeout)
	if err != nil {
		return nil, nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(handshakeTimeout))
	b, err := encodeJSON(&frame{Hello: &hello{Version: c.version}})
	if err == nil {
		_, err = nc.Write(b)
	}
	if err != nil {
		_ = nc.Close() // the write error is the one to report
		return nil, nil, fmt.Errorf("send hello: %w", err)
	}
	br := bufio.NewReaderSize(nc, 64<<10)
	kind, body, err := readFrame(br)
	var f *frame
	if err == nil {
		if kind != kindJSON {
			err = fmt.Errorf("unexpected frame kind %q", kind)
		} else {
			f, err = decodeJSON(body)
		}
	}
	switch {
	case err != nil:
		_ = nc.Close() // the handshake failed: that is the error to report
		return nil, nil, fmt.Errorf("read welcome: %w", err)
	case f.Error != "":
		_ = nc.Close() // the handshake failed: that is the error to report
		return nil, nil, fmt.Errorf("%w: %s", errRefused, f.Error)
	case f.Welcome == nil || f.Welcome.Version != c.version:
		_ = nc.Close() // the handshake failed: that is the error to report
		return nil, nil, errors.New("read welcome: not a welcome of this protocol version")
	case f.Welcome.Instance == "" || len(f.Welcome.Instance) > MaxInstanceLen:
		_ = nc.Close() // the handshake failed: that is the error to report
		return nil, nil, errors.New("read welcome: the runner names no valid instance")
	}
	_ = nc.SetDeadline(time.Time{})
	return &cconn{nc: nc, br: br, envBase: f.Welcome.EnvDigest == c.baseID}, f.Welcome, nil
}

// spawn starts a runner process and waits until it listens. It returns
// errBusy when another runner holds the lock.
func (c *Client) spawn(ctx context.Context) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("create runner dir: %w", err)
	}
	logPath := filepath.Join(c.dir, logName)
	if st, err := os.Stat(logPath); err == nil && st.Size() > maxLogSize {
		_ = os.Rename(logPath, logPath+".1")
	}
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open runner log: %w", err)
	}
	// The runner writes its log through its own descriptor: ours is never
	// written, so closing it loses nothing.
	defer func() { _ = logf.Close() }()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start runner: %w", err)
	}
	defer func() { _ = r.Close() }() // read only
	args := append([]string(nil), c.cfg.Command[1:]...)
	args = append(args, "--state-dir", c.cfg.StateDir)
	if c.cfg.IdleExit > 0 {
		args = append(args, "--idle-exit", c.cfg.IdleExit.String())
	}
	if c.version != ProtocolVersion {
		args = append(args, "--protocol-version", strconv.Itoa(c.version))
	}
	cmd := exec.Command(c.cfg.Command[0], args...)
	cmd.Args[0] = displayName(c.cfg.Command[0])
	cmd.Env = c.cfg.Env
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	err = cmd.Start()
	_ = w.Close() // the launcher has its own copy; closing ours lets ReadAll see its end
	if err != nil {
		return fmt.Errorf("start runner: %w", err)
	}
	// The launcher exits as soon as it has started the runner detached.
	// What it reports on the pipe says how the start went, not its exit
	// status.
	waited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(waited)
	}()
	_ = r.SetReadDeadline(time.Now().Add(readyTimeout))
	msg, readErr := io.ReadAll(io.LimitReader(r, 4096))
	select {
	case <-waited:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-waited
		return ctx.Err()
	case <-time.After(readyTimeout):
		_ = cmd.Process.Kill()
		<-waited
	}
	line := strings.TrimSpace(string(msg))
	switch {
	case strings.HasPrefix(line, "ready"):
		c.log.Info("started a runner", slog.String("report", line), slog.String("log", logPath))
		return nil
	case line == "busy":
		return errBusy
	case strings.HasPrefix(line, "error: "):
		return fmt.Errorf("runner failed to start: %s (see %s)", strings.TrimPrefix(line, "error: "), logPath)
	case readErr != nil:
		return fmt.Errorf("runner did not report within %s: %w (see %s)", readyTimeout, readErr, logPath)
	default:
		return fmt.Errorf("runner exited without reporting (see %s)", logPath)
	}
}
