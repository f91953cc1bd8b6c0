package runner

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/batonhq/baton/agent/process"
)

// BenchmarkInstantChild measures starting /bin/true and learning its exit:
// through the runner (request, fork/exec there, records, exit message,
// confirmation) and directly with package process, the difference being
// what the runner costs per child.
func BenchmarkInstantChild(b *testing.B) {
	truePath, err := exec.LookPath("true")
	if err != nil {
		b.Skip("no true command")
	}
	b.Run("runner", func(b *testing.B) {
		exe, err := os.Executable()
		if err != nil {
			b.Fatal(err)
		}
		c, err := Open(b.Context(), ClientConfig{
			StateDir: b.TempDir(),
			Command:  []string{exe, "runner"},
			IdleExit: 100 * time.Millisecond,
		})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		id := int64(0)
		for b.Loop() {
			id++
			p, err := c.Start(b.Context(), &StartRequest{ID: id, Path: truePath, Argv: []string{"true"}, Dir: "/"}, &captured{})
			if err != nil {
				b.Fatal(err)
			}
			<-p.Done()
			if res := p.Result(); res.ExitCode != 0 {
				b.Fatalf("exit %d (%s)", res.ExitCode, res.Err)
			}
			c.Confirm(id)
		}
	})
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			p, err := process.Start(process.Spec{Path: truePath, Argv: []string{"true"}, Dir: "/"})
			if err != nil {
				b.Fatal(err)
			}
			<-p.Done()
			if res := p.Result(); res.ExitCode != 0 {
				b.Fatalf("exit %d (%v)", res.ExitCode, res.Err)
			}
		}
	})
}
