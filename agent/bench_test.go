package agent

import (
	"log/slog"
	"os/exec"
	"testing"

	"github.com/batonhq/baton/agent/allow"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// BenchmarkAttemptRoundTrip measures one attempt from StartTask to
// TaskFinished for a child that exits at once: journal writes, output
// file, fork/exec of the test binary, reaping, outcome over real gRPC.
func BenchmarkAttemptRoundTrip(b *testing.B) {
	bundle := setup(b)
	bundle.start(b, bundle.config())
	s := bundle.srv.session(b)
	id := int64(0)
	for b.Loop() {
		id++
		s.startTask(b, bundle.task(id, "exit"))
		if tf, _ := s.finished(b, id); tf.GetOutcome() != succeeded {
			b.Fatalf("outcome = %v (%s)", tf.GetOutcome(), tf.GetError())
		}
		s.ack(b, id)
	}
}

// BenchmarkLogStream measures streaming 1 MiB of child output into
// LogChunks.
func BenchmarkLogStream(b *testing.B) {
	data := pattern(7001)
	b.SetBytes(logStreamCap)
	for b.Loop() {
		l := &logStream{emit: func(*batonv1.LogChunk) {}}
		l.setOpen()
		for n := 0; n < logStreamCap; n += len(data) {
			_, _ = l.Write(data)
		}
		l.flush()
	}
}

// BenchmarkInstantChild measures StartTask to TaskFinished for /bin/true,
// with children in the runner process (Unix) and in the agent process (as
// on Windows): the cost of the runner's extra hop. Logs are discarded.
func BenchmarkInstantChild(b *testing.B) {
	truePath, err := exec.LookPath("true")
	if err != nil {
		b.Skip("no true command")
	}
	for _, local := range []bool{false, true} {
		name := "runner"
		if local {
			name = "local"
		}
		b.Run(name, func(b *testing.B) {
			bundle := setup(b)
			bundle.localChildren = local
			cfg := bundle.config()
			cfg.Logger = slog.New(slog.DiscardHandler)
			// true, wherever it really is (symbolic links evaluated).
			policy, err := allow.New(allow.Config{Programs: []string{truePath}})
			if err != nil {
				b.Fatal(err)
			}
			cfg.Policy = policy
			bundle.start(b, cfg)
			s := bundle.srv.session(b)
			id := int64(0)
			for b.Loop() {
				id++
				st := bundle.task(id, "exit")
				st.Argv = []string{truePath}
				s.startTask(b, st)
				if tf, _ := s.finished(b, id); tf.GetOutcome() != succeeded {
					b.Fatalf("outcome = %v (%s)", tf.GetOutcome(), tf.GetError())
				}
				s.ack(b, id)
			}
		})
	}
}
