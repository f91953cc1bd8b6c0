package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/client"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

// TestSecureCluster starts a cluster with security on, as -secure does,
// and checks that batond really enforces it: the harness's client works
// with its token over TLS, the approved agents (a baton-agent and two
// simulated ones) are connected and not pending, and a call without a
// token or without TLS is refused.
func TestSecureCluster(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	bins, err := build(ctx, filepath.Join("..", ".."), filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	sec, err := newSecurity(filepath.Join(dir, "pki"), 1, 2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	cl, err := startCluster(ctx, bins, filepath.Join(dir, "cluster"), false, sec, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if err := cl.approve(ctx, false, 1, 2); err != nil {
		t.Fatal(err)
	}
	trueBin, err := trueProgram()
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.startAgents(ctx, 1, 2, trueBin); err != nil {
		t.Fatal(err)
	}
	if err := cl.approve(ctx, true, 2, 1); err != nil {
		t.Fatal(err)
	}
	if err := cl.startSims(ctx, 2, 1); err != nil {
		t.Fatal(err)
	}
	agents, err := cl.c.ListAgents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]batonv1.AgentState{}
	for _, a := range agents {
		states[a.GetName()] = a.GetState()
	}
	for _, name := range []string{"agent-1", "sim-1", "sim-2"} {
		if states[name] != batonv1.AgentState_AGENT_STATE_CONNECTED {
			t.Errorf("agent %s is %s, want connected (approved before it connected)", name, states[name])
		}
	}

	refused := []struct {
		name string
		dial client.DialConfig
		want codes.Code
	}{
		{name: "TLS without a token", dial: client.DialConfig{Addr: cl.grpc, CAFile: sec.caFile()}, want: codes.Unauthenticated},
		{name: "no TLS", dial: client.DialConfig{Addr: cl.grpc}, want: codes.Unavailable},
	}
	for _, tc := range refused {
		conn, err := client.Dial(tc.dial)
		if err != nil {
			t.Fatalf("%s: Dial: %v", tc.name, err)
		}
		_, err = client.New(conn).ListAgents(ctx)
		if status.Code(err) != tc.want {
			t.Errorf("%s: ListAgents = %v, want %s", tc.name, err, tc.want)
		}
		_ = conn.Close() // a client connection; nothing was written
	}
}
