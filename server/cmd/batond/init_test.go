package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batonhq/baton/server/auth"
)

// TestInit: init creates one admin token and prints it once; a second
// init refuses and says how to make more; --token-file writes it 0600.
func TestInit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := run([]string{"init", "--data-dir", dir}, &out, &errb); code != 0 {
		t.Fatalf("batond init = %d, stderr %s", code, errb.String())
	}
	tok := strings.TrimSpace(out.String())
	if err := auth.CheckToken(tok); err != nil {
		t.Fatalf("batond init printed %q: %v", tok, err)
	}
	if !strings.Contains(errb.String(), "not shown again") {
		t.Errorf("batond init stderr = %q, want it to say the token is shown once", errb.String())
	}

	out.Reset()
	errb.Reset()
	if code := run([]string{"init", "--data-dir", dir}, &out, &errb); code != 1 {
		t.Fatalf("batond init again = %d, want 1", code)
	}
	if out.Len() != 0 || !strings.Contains(errb.String(), "an admin token exists") ||
		!strings.Contains(errb.String(), "baton token create") {
		t.Errorf("batond init again: stdout %q, stderr %q; want nothing printed and how to create more", out.String(), errb.String())
	}

	// Into a file, 0600, on a fresh store; an existing file is not replaced.
	dir2 := t.TempDir()
	file := filepath.Join(dir2, "token")
	out.Reset()
	errb.Reset()
	if code := run([]string{"init", "--data-dir", filepath.Join(dir2, "data"), "--token-file", file}, &out, &errb); code != 0 {
		t.Fatalf("batond init --token-file = %d, stderr %s", code, errb.String())
	}
	b, err := os.ReadFile(file)
	if err != nil || auth.CheckToken(strings.TrimSpace(string(b))) != nil || out.Len() != 0 {
		t.Fatalf("token file = %q, %v (stdout %q); want the token and nothing on stdout", b, err, out.String())
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	if code := run([]string{"init", "--data-dir", t.TempDir(), "--token-file", file}, &out, &errb); code != 1 {
		t.Errorf("batond init --token-file with an existing file = %d, want 1", code)
	}
}

// TestAuthFlag: --auth takes on or off only.
func TestAuthFlag(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		o    options
		want string
	}{
		{options{grpcAddr: "127.0.0.1:7700", httpAddr: "127.0.0.1:7701"}, "off"},
		{options{grpcAddr: "0.0.0.0:7700", httpAddr: "127.0.0.1:7701"}, "on"},
		{options{grpcAddr: "127.0.0.1:7700", httpAddr: "127.0.0.1:7701", auth: "on"}, "on"},
		{options{grpcAddr: "0.0.0.0:7700", httpAddr: "off", auth: "off"}, "off"},
	} {
		got, err := authMode(&tc.o)
		if err != nil || string(got) != tc.want {
			t.Errorf("authMode(%+v) = %q, %v; want %q", tc.o, got, err, tc.want)
		}
	}
	if _, err := authMode(&options{auth: "maybe"}); err == nil {
		t.Error("authMode(--auth maybe) = nil error, want a usage error")
	}
}

// TestRefusedConfigChangesNothing: a command line batond refuses (a
// listener beyond loopback without TLS or agent certificates) is refused
// before the store is created or migrated.
func TestRefusedConfigChangesNothing(t *testing.T) {
	for _, args := range [][]string{
		{"--grpc-addr", "0.0.0.0:0"},
		{"--grpc-addr", "127.0.0.1:0", "--http-addr", "0.0.0.0:0"},
		{"--grpc-addr", "127.0.0.1:0", "--agent-ca", "ca.crt"},
		{"--grpc-addr", "127.0.0.1:0", "--tls-cert", "x.crt"},
	} {
		dir := filepath.Join(t.TempDir(), "data")
		var out, errb bytes.Buffer
		if code := run(append(args, "--data-dir", dir), &out, &errb); code == 0 {
			t.Fatalf("batond %v = 0, want refused", args)
		}
		if !strings.Contains(errb.String(), "batond: ") {
			t.Errorf("batond %v: stderr %q, want the reason", args, errb.String())
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("batond %v created %s (%v) though it refused to start", args, dir, err)
		}
	}
}
