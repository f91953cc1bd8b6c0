package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/batonhq/baton/client/pki"
)

// simPrefix names the simulated agents simPrefix-1 ... simPrefix-N.
const simPrefix = "sim"

// security is what a run with security on needs: a private CA with
// batond's server certificate and a client certificate for every agent
// name the shapes use, made once per benchmark run. A nil *security means
// security off.
type security struct {
	// dir holds ca.crt, server.crt and server.key, and agent-NAME.crt and
	// agent-NAME.key for each agent (pki's file names).
	dir string
}

// newSecurity makes the CA, batond's certificate for 127.0.0.1 and the
// client certificates of baton-agents agent-1 ... agent-<agents> and
// simulated agents sim-1 ... sim-<sims> in dir.
func newSecurity(dir string, agents, sims int, now time.Time) (*security, error) {
	const validity = 7 * 24 * time.Hour
	if err := pki.NewCA(dir, "Baton benchmark CA", validity, now); err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	ca, err := pki.LoadCA(dir)
	if err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	if err := ca.Server(dir, []string{"127.0.0.1", "localhost"}, validity, now); err != nil {
		return nil, fmt.Errorf("certificates: %w", err)
	}
	for _, name := range slices.Concat(agentNames(false, agents), agentNames(true, sims)) {
		if err := ca.Agent(dir, name, validity, now); err != nil {
			return nil, fmt.Errorf("certificates: %w", err)
		}
	}
	return &security{dir: dir}, nil
}

// agentNames returns the names of n agents: the baton-agents' agent-1 ...
// (the names cluster.startAgents gives) or the simulated agents' sim-1 ....
func agentNames(sim bool, n int) []string {
	prefix := "agent-"
	if sim {
		prefix = simPrefix + "-"
	}
	names := make([]string, n)
	for i := range names {
		names[i] = prefix + strconv.Itoa(i+1)
	}
	return names
}

func (s *security) caFile() string { return filepath.Join(s.dir, pki.CACert) }

// batondArgs turns everything on: TLS on both listeners, agent client
// certificates from the CA, agent approval and API tokens.
func (s *security) batondArgs() []string {
	return []string{
		"--tls-cert", filepath.Join(s.dir, pki.ServerCrt), "--tls-key", filepath.Join(s.dir, pki.ServerKey),
		"--agent-ca", s.caFile(), "--agent-approval", "--auth", "on",
	}
}

// agentArgs are baton-agent name's flags: verify batond, present its
// certificate. They are none when s is nil.
func (s *security) agentArgs(name string) []string {
	if s == nil {
		return nil
	}
	crt, key := pki.AgentFiles(name)
	return []string{"--ca-file", s.caFile(), "--tls-cert", filepath.Join(s.dir, crt), "--tls-key", filepath.Join(s.dir, key)}
}

// simArgs are simagent's flags: verify batond, and each simulated agent
// presents its own certificate from the directory. They are none when s
// is nil.
func (s *security) simArgs() []string {
	if s == nil {
		return nil
	}
	return []string{"--ca-file", s.caFile(), "--cert-dir", s.dir}
}

// initToken runs `batond init` on the store that storeArgs name (which
// migrates it) and returns the first admin token, kept in dir/token.
func initToken(ctx context.Context, batond, dir string, storeArgs []string) (string, error) {
	file := filepath.Join(dir, "token")
	cmd := exec.CommandContext(ctx, batond, append([]string{"init", "--token-file", file}, storeArgs...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("batond init: %w\n%s", err, out)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("batond init: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("batond init: %s is empty", file)
	}
	return token, nil
}
