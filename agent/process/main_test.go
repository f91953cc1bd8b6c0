package process_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary doubles as the child process: with BATON_TEST_CHILD set,
// TestMain runs the named behaviour instead of the tests (buildkite
// internal/process/main_test.go does the same).
func TestMain(m *testing.M) {
	if b := os.Getenv("BATON_TEST_CHILD"); b != "" {
		os.Exit(child(b))
	}
	goleak.VerifyTestMain(m)
}

func child(behaviour string) int {
	switch behaviour {
	case "exit":
		code, _ := strconv.Atoi(os.Getenv("BATON_TEST_EXIT"))
		return code
	case "info":
		args, _ := json.Marshal(os.Args[1:])
		cwd, _ := os.Getwd()
		fmt.Printf("args=%s\ncwd=%s\nx=%s\n", args, cwd, os.Getenv("BATON_TEST_X"))
		return 0
	case "sleep":
		fmt.Println("ready")
		time.Sleep(time.Hour)
		return 0
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
		time.Sleep(time.Hour)
		return 0
	case "spawn":
		// Start a sleeping grandchild that shares this process's stdout,
		// print its pid, then exit or sleep.
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		gc := exec.Command(exe)
		gc.Env = append(os.Environ(), "BATON_TEST_CHILD=sleep")
		gc.Stdout = os.Stdout
		gc.Stderr = os.Stderr
		gc.SysProcAttr = grandchildAttr(os.Getenv("BATON_TEST_SETSID") == "1")
		if err := gc.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("grandchild=%d\n", gc.Process.Pid)
		if os.Getenv("BATON_TEST_THEN") == "exit" {
			return 0
		}
		time.Sleep(time.Hour)
		return 0
	default:
		fmt.Fprintf(os.Stderr, "unknown BATON_TEST_CHILD %q\n", behaviour)
		return 99
	}
}
