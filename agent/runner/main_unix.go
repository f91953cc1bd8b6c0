//go:build unix

package runner

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
)

// readyFD is the descriptor on which a starting runner reports to the
// agent that started it: "ready <pid>", "busy" (another runner holds the
// lock) or "error: ...", then end of file.
const readyFD = 3

// Main runs the runner command: args are the arguments after the program's
// runner subcommand (os.Args must end with them), stderr receives usage
// errors. It returns the process exit code.
//
// Started by the agent, Main re-executes the program detached (a session
// of its own, stdio as given, the ready descriptor passed on) and returns
// at once; the detached copy (--detached) is the runner, whose parent is
// gone, so nothing waits for it and killing the agent leaves it alone.
// Programs that embed the agent must call Main for the argument their
// Config.RunnerCommand names, as baton-agent does for "runner".
func Main(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("runner", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", "", "the agent's state directory (required, absolute)")
	idle := fs.Duration("idle-exit", DefaultIdleExit, "exit after this long with no agent attached, no child running and no unconfirmed exit")
	version := fs.Int("protocol-version", ProtocolVersion, "protocol version to speak; tests only")
	detached := fs.Bool("detached", false, "run the runner itself instead of launching it detached (internal)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Writes to stderr are best effort: the exit code reports the failure.
	switch {
	case fs.NArg() > 0:
		_, _ = fmt.Fprintf(stderr, "runner: unexpected argument %q\n", fs.Arg(0))
		return 2
	case *stateDir == "" || !filepath.IsAbs(*stateDir):
		_, _ = fmt.Fprintln(stderr, "runner: --state-dir must be an absolute path")
		return 2
	case *idle <= 0:
		_, _ = fmt.Fprintln(stderr, "runner: --idle-exit must be positive")
		return 2
	case *version < 0:
		_, _ = fmt.Fprintln(stderr, "runner: --protocol-version must not be negative")
		return 2
	}
	ready := newReady()
	if !*detached {
		if err := launch(args, ready.f); err != nil {
			ready.say("error: " + err.Error())
			_, _ = fmt.Fprintln(stderr, "runner:", err)
			return 1
		}
		return 0
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	err := serve(context.Background(), serverConfig{
		StateDir: *stateDir,
		IdleExit: *idle,
		Version:  *version,
		Logger:   log,
		Ready:    func() { ready.say(fmt.Sprintf("ready %d", os.Getpid())) },
	})
	switch {
	case errors.Is(err, errBusy):
		ready.say("busy")
		return 0
	case err != nil:
		ready.say("error: " + err.Error())
		log.Error("runner failed", slog.Any("error", err))
		return 1
	}
	return 0
}

// launch re-executes this program as the detached runner, passing on the
// ready descriptor when there is one.
func launch(args []string, readyFile *os.File) error {
	if len(os.Args) < len(args)+1 || !slices.Equal(os.Args[len(os.Args)-len(args):], args) {
		return errors.New("the runner's arguments must end the command line")
	}
	exe, err := Executable()
	if err != nil {
		return fmt.Errorf("find executable: %w", err)
	}
	argv := append(slices.Clone(os.Args[1:]), "--detached")
	cmd := exec.Command(exe, argv...)
	cmd.Args[0] = os.Args[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if readyFile != nil {
		cmd.ExtraFiles = []*os.File{readyFile}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start runner: %w", err)
	}
	return cmd.Process.Release()
}

// Executable returns the path that starts this very program again. On
// Linux that is /proc/self/exe, which names the running binary even after
// an upgrade replaced the file on disk: an agent starts a runner of its
// own version, never one of a binary installed after it started.
// Elsewhere it is os.Executable.
func Executable() (string, error) {
	const self = "/proc/self/exe"
	if _, err := os.Stat(self); err == nil {
		return self, nil
	}
	return os.Executable()
}

// displayName is what a process started from path shows as its argv[0]:
// the program's own path rather than /proc/self/exe.
func displayName(path string) string {
	if path == "/proc/self/exe" {
		if exe, err := os.Executable(); err == nil {
			return exe
		}
	}
	return path
}

// ready reports once on the ready descriptor and closes it.
type ready struct {
	once sync.Once
	f    *os.File
}

// newReady opens the ready descriptor; without one (the runner started by
// hand) reports go nowhere.
func newReady() *ready {
	f := os.NewFile(readyFD, "ready")
	if f == nil {
		return &ready{}
	}
	if _, err := f.Stat(); err != nil {
		return &ready{}
	}
	return &ready{f: f}
}

func (r *ready) say(msg string) {
	r.once.Do(func() {
		if r.f == nil {
			return
		}
		_, _ = io.WriteString(r.f, msg+"\n")
		_ = r.f.Close()
	})
}
