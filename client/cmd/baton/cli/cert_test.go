package cli_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/batonhq/baton/client"
	"github.com/batonhq/baton/client/cmd/baton/cli"
)

func TestCert(t *testing.T) {
	t.Parallel()
	b := setup(t)
	dir := t.TempDir()
	b.run(t, "cert", "ca", "--dir", dir).want(t, cli.ExitOK,
		"wrote "+filepath.Join(dir, "ca.crt")+" and "+filepath.Join(dir, "ca.key")+" (keep the key secret and off the servers)\n", "")
	b.run(t, "cert", "server", "--dir", dir, "batond.example.com", "127.0.0.1").want(t, cli.ExitOK,
		"wrote "+filepath.Join(dir, "server.crt")+" and "+filepath.Join(dir, "server.key")+": start batond with --tls-cert and --tls-key naming them\n", "")
	r := b.run(t, "cert", "agent", "--dir", dir, "sql01")
	if r.code != cli.ExitOK || !strings.Contains(r.stdout, "agent-sql01.crt") {
		t.Fatalf("cert agent = %d %q %q", r.code, r.stdout, r.stderr)
	}
	if name, err := client.AgentCertFileName(filepath.Join(dir, "agent-sql01.crt")); err != nil || name != "sql01" {
		t.Errorf("agent certificate names %q, %v; want sql01", name, err)
	}
	if r := b.run(t, "cert", "agent", "--dir", dir, "sql01"); r.code != cli.ExitError || !strings.Contains(r.stderr, "exists") {
		t.Errorf("cert agent twice = %d %q, want it refused: never overwrite", r.code, r.stderr)
	}
	if r := b.run(t, "cert", "agent", "--dir", t.TempDir(), "x"); r.code != cli.ExitError || !strings.Contains(r.stderr, "baton cert ca") {
		t.Errorf("cert agent without a CA = %d %q, want it to say how to make one", r.code, r.stderr)
	}
	if r := b.run(t, "cert", "ca", "--dir", t.TempDir(), "--days", "0"); r.code != cli.ExitError || !strings.Contains(r.stderr, "--days") {
		t.Errorf("cert ca --days 0 = %d %q, want the flag named", r.code, r.stderr)
	}
}
