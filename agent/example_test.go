package agent_test

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/batonhq/baton/agent"
	"github.com/batonhq/baton/agent/allow"
	"github.com/batonhq/baton/agent/runner"
	"github.com/batonhq/baton/client"
)

// An agent that drains on the first SIGINT/SIGTERM and kills its children
// on the second, as baton-agent does. The program is also the agent's
// runner, the process that keeps the children running when the agent is
// killed or upgraded: started with the argument "runner" (the default
// Config.RunnerCommand), it runs runner.Main instead.
func Example() {
	if len(os.Args) > 1 && os.Args[1] == "runner" {
		os.Exit(runner.Main(os.Args[2:], os.Stderr))
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// The agent runs only what its host allows.
	policy, err := allow.New(allow.Config{
		Programs: []string{"/opt/etl/bin/*", "/usr/bin/sqlcmd"},
		Dirs:     []string{"/data/etl"},
	})
	if err != nil {
		log.Error("bad allowlist", slog.Any("error", err))
		return
	}
	a, err := agent.New(agent.Config{
		Server:   client.DialConfig{Addr: "batond.example.com:7700", TLS: true},
		Name:     "etl-01",
		Labels:   map[string]string{"role": "ssis", "dc": "east"},
		Slots:    8,
		StateDir: "/var/lib/baton-agent/etl-01",
		Policy:   policy,
		Logger:   log,
	})
	if err != nil {
		log.Error("cannot start the agent", slog.Any("error", err))
		return
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	ctx, drain := context.WithCancel(context.Background())
	go func() {
		<-sig
		drain() // no new work; running children finish and report
		<-sig
		a.Abort() // kill the children's process trees
	}()
	if err := a.Run(ctx); err != nil {
		log.Error("agent stopped", slog.Any("error", err))
	}
}
