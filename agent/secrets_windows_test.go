//go:build windows

package agent

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/batonhq/baton/agent/internal/redact"
)

// secretsDir makes a directory for secret files. It is removed at best:
// under wine, t.TempDir's cleanup fails.
func secretsDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "baton-secrets-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestSecretFileEncodingsWindows: a secret file as Windows tools write it
// (Notepad's or Set-Content -Encoding utf8's byte order mark, PowerShell
// 5.1's UTF-16 from Out-File or >) holds the text the child must get; a
// file in an ANSI code page is refused rather than handed over as U+FFFD.
func TestSecretFileEncodingsWindows(t *testing.T) {
	t.Parallel()
	const want = "Pässwort-42"
	utf16le := func(s string) []byte {
		b := []byte{0xFF, 0xFE}
		for _, c := range utf16.Encode([]rune(s)) {
			b = append(b, byte(c), byte(c>>8))
		}
		return b
	}
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{name: "utf-8", data: []byte(want + "\r\n")},
		{name: "utf-8 with BOM", data: []byte("\uFEFF" + want + "\r\n")},
		{name: "utf-16 with BOM", data: utf16le(want + "\r\n")},
		{name: "ansi", data: []byte("P\xe4sswort-42\r\n"), wantErr: "is not UTF-8 text"},
	}
	dir := secretsDir(t)
	for i, tc := range tests {
		path := filepath.Join(dir, "s"+string(rune('0'+i)))
		if err := os.WriteFile(path, tc.data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := readSecretFile(path)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: readSecretFile = %q, %v; want an error with %q", tc.name, got, err, tc.wantErr)
			}
		case err != nil || got != want:
			t.Errorf("%s: readSecretFile = %q, %v; want %q", tc.name, got, err, want)
		}
	}
}

// TestSecretRedactedAsCmdPrintsIt: a secret with characters outside ASCII
// that a child prints through cmd.exe reaches the agent in a code page,
// not as UTF-8; it is redacted all the same.
func TestSecretRedactedAsCmdPrintsIt(t *testing.T) {
	t.Parallel()
	const value = "Pässwort-42"
	dir := secretsDir(t)
	if err := os.WriteFile(filepath.Join(dir, "dbpass"), []byte(value+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &Agent{cfg: Config{SecretsDir: dir}}
	env, secrets, err := a.resolveSecrets(map[string]string{"PW": "dbpass"})
	if err != nil {
		t.Fatal(err)
	}
	cmdPath := filepath.Join(os.Getenv("SystemRoot"), "System32", "cmd.exe")
	cmd := exec.Command(cmdPath, "/d", "/c", "echo pw=%PW%")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", cmdPath, err)
	}
	if !bytes.Contains(out, []byte("sswort-42")) {
		t.Fatalf("cmd.exe printed %q: the value is not in it", out)
	}
	got := redact.New(secrets).Bytes(out)
	if bytes.Contains(got, []byte("sswort-42")) || !bytes.Contains(got, []byte("pw=[secret:dbpass]")) {
		t.Errorf("cmd.exe printed %q; redacted: %q, want pw=[secret:dbpass]", out, got)
	}
}
