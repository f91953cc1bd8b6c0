package agent

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/batonhq/baton/agent/allow"
	batonv1 "github.com/batonhq/baton/gen/baton/v1"
)

const notAllowed = batonv1.AttemptOutcome_ATTEMPT_OUTCOME_NOT_ALLOWED

// TestNotAllowedStartsNothing: a StartTask outside the agent's allowlist
// (its program, through a symbolic link too, an environment name that
// changes what runs, a working directory outside --allow-dir) starts
// nothing: the child, which would write a marker file, never runs, no
// TaskStarted is sent, and the attempt is reported NOT_ALLOWED with a
// message naming what was refused, the agent and the rule.
func TestNotAllowedStartsNothing(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links need privileges on Windows")
	}
	tests := []struct {
		name    string
		modify  func(t *testing.T, b *testBundle, st *batonv1.StartTask, cfg *allow.Config)
		wantErr string
	}{
		{
			name: "program outside the patterns",
			modify: func(t *testing.T, b *testBundle, st *batonv1.StartTask, cfg *allow.Config) {
				cfg.Programs = []string{"/opt/etl/bin/*"}
			},
			wantErr: "program " + "%EXE%" + " is not allowed on agent test-agent: it matches none of --allow /opt/etl/bin/*",
		},
		{
			name: "a link inside the pattern to a program outside it",
			modify: func(t *testing.T, b *testBundle, st *batonv1.StartTask, cfg *allow.Config) {
				dir := t.TempDir()
				link := filepath.Join(dir, "load")
				if err := os.Symlink(b.exe, link); err != nil {
					t.Fatal(err)
				}
				cfg.Programs = []string{filepath.Join(dir, "*")}
				st.Argv[0] = link
			},
			wantErr: "(a link to %EXE%) is not allowed on agent test-agent: it matches none of --allow",
		},
		{
			name: "LD_PRELOAD",
			modify: func(t *testing.T, b *testBundle, st *batonv1.StartTask, cfg *allow.Config) {
				st.Env["LD_PRELOAD"] = "/tmp/evil.so"
			},
			wantErr: "environment variable LD_PRELOAD is not allowed on agent test-agent: LD_PRELOAD can change which program runs (rule LD_*); allow it with --allow-env LD_PRELOAD",
		},
		{
			name: "PATH from a secret",
			modify: func(t *testing.T, b *testBundle, st *batonv1.StartTask, cfg *allow.Config) {
				st.SecretEnv = map[string]string{"PATH": "p"}
			},
			wantErr: "environment variable PATH is not allowed",
		},
		{
			name: "working dir outside the roots",
			modify: func(t *testing.T, b *testBundle, st *batonv1.StartTask, cfg *allow.Config) {
				cfg.Dirs = []string{t.TempDir()}
				st.WorkingDir = "/"
			},
			wantErr: "working_dir / is not allowed on agent test-agent: it is in none of --allow-dir",
		},
		{
			name: "working dir without roots",
			modify: func(t *testing.T, b *testBundle, st *batonv1.StartTask, cfg *allow.Config) {
				cfg.Dirs = nil
				st.WorkingDir = t.TempDir()
			},
			wantErr: "no --allow-dir is given, so a task must leave working_dir empty",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			marker := filepath.Join(t.TempDir(), "ran")
			st := b.task(7, "count", "BATON_TEST_MARKER", marker)
			cfg := allow.Config{Programs: []string{filepath.Join(filepath.Dir(b.exe), "*")}, Dirs: []string{os.TempDir()}}
			tc.modify(t, b, st, &cfg)
			policy, err := allow.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			acfg := b.config()
			acfg.Policy = policy
			b.start(t, acfg)
			s := b.srv.session(t)
			s.startTask(t, st)
			tf, msgs := s.finished(t, 7)
			want := strings.ReplaceAll(tc.wantErr, "%EXE%", b.exe)
			if tf.GetOutcome() != notAllowed || tf.GetExitCode() != -1 || !strings.Contains(tf.GetError(), want) {
				t.Errorf("TaskFinished = {%v, %d, %q}, want {NOT_ALLOWED, -1, ...%q...}", tf.GetOutcome(), tf.GetExitCode(), tf.GetError(), want)
			}
			for _, m := range msgs {
				if m.GetTaskStarted() != nil {
					t.Errorf("got TaskStarted %v for a refused attempt", m.GetTaskStarted())
				}
			}
			if _, err := os.Stat(marker); !os.IsNotExist(err) {
				t.Errorf("the refused child ran: marker %s: %v", marker, err)
			}
		})
	}
}

// TestAllowedThroughLink: a link outside the patterns to a program inside
// them runs, and what runs is the real file.
func TestAllowedThroughLink(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "windows" {
		t.Skip("symbolic links need privileges on Windows")
	}
	b := setup(t)
	link := filepath.Join(t.TempDir(), "load")
	if err := os.Symlink(b.exe, link); err != nil {
		t.Fatal(err)
	}
	b.start(t, b.config())
	s := b.srv.session(t)
	st := b.task(8, "exit")
	st.Argv[0] = link
	s.startTask(t, st)
	if tf, _ := s.finished(t, 8); tf.GetOutcome() != succeeded {
		t.Errorf("TaskFinished = {%v, %q}, want SUCCEEDED", tf.GetOutcome(), tf.GetError())
	}
}

// TestSecretRedacted: a secret the agent resolves from its secrets
// directory reaches the child, and its value appears nowhere the agent
// sends or keeps: not in the streamed stdout (where it straddles the first
// 32 KiB read and log chunk) or stderr, not in the tails, not in the
// outputs, not in any file under the state directory (journal, runner
// records and logs). Both with the runner and with children in the agent
// process (as on Windows).
func TestSecretRedacted(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-Pa55w0rd-!@#"
	for _, local := range []bool{false, true} {
		name := "runner"
		if local {
			name = "local"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.localChildren = local
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "dbpass"), []byte(secret+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := b.config()
			cfg.SecretsDir = dir
			ra := b.start(t, cfg)
			s := b.srv.session(t)
			st := b.task(5, "secret", "TEST_WANT", secret)
			st.SecretEnv = map[string]string{"TEST_SECRET": "dbpass"}
			s.startTask(t, st)
			tf, msgs := s.finished(t, 5)
			if tf.GetOutcome() != succeeded {
				t.Fatalf("TaskFinished = {%v, %q}, want SUCCEEDED", tf.GetOutcome(), tf.GetError())
			}
			if got := tf.GetOutputs()["match"]; got != "true" {
				t.Errorf("outputs[match] = %q: the child did not see the secret's value", got)
			}
			if got := tf.GetOutputs()["pw"]; got != "[secret:dbpass]" {
				t.Errorf("outputs[pw] = %q, want [secret:dbpass]", got)
			}
			var stdout, stderr []byte
			for _, m := range msgs {
				if c := m.GetLogChunk(); c != nil {
					if c.GetStream() == streamStdout {
						stdout = append(stdout, c.GetData()...)
					} else {
						stderr = append(stderr, c.GetData()...)
					}
				}
			}
			wantOut := strings.Repeat("x", 32<<10-len(secret)/2) + "[secret:dbpass]\n"
			if string(stdout) != wantOut {
				t.Errorf("streamed stdout (%d bytes) ends %q, want %d bytes ending %q", len(stdout), tail(stdout), len(wantOut), tail([]byte(wantOut)))
			}
			if want := "connecting with password [secret:dbpass]\n"; string(stderr) != want {
				t.Errorf("streamed stderr = %q, want %q", stderr, want)
			}
			for what, b := range map[string][]byte{"stdout": stdout, "stderr": stderr, "stdout tail": tf.GetStdoutTail(), "stderr tail": tf.GetStderrTail(), "error": []byte(tf.GetError())} {
				if bytes.Contains(b, []byte(secret)) {
					t.Errorf("%s holds the secret", what)
				}
			}
			if !bytes.Contains(tf.GetStderrTail(), []byte("[secret:dbpass]")) {
				t.Errorf("stderr tail = %q, want the placeholder", tf.GetStderrTail())
			}
			// The journal holds the outcome and the runner its exit record
			// before TaskFinished is sent; the child's own $BATON_OUTPUT
			// file, which holds what it wrote, is emptied or removed once
			// the outcome is journaled, which a stopped agent has done.
			s.ack(t, 5)
			ra.cancel()
			if err := ra.wait(t); err != nil {
				t.Fatalf("Run = %v", err)
			}
			noSecretUnder(t, b.stateDir, secret)
		})
	}
}

func tail(b []byte) []byte { return b[max(0, len(b)-40):] }

// noSecretUnder fails the test when a file below dir holds secret.
func noSecretUnder(t *testing.T, dir, secret string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		if bytes.Contains(data, []byte(secret)) {
			t.Errorf("%s holds the secret", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatalf("no files under %s", dir)
	}
}

// TestSecretMissing: a secret the agent cannot find, or whose file others
// may read, fails the attempt without starting anything, with a message
// naming the secret and where the agent looked. BATON_SECRET_ variables
// are secrets, found when no file is, and never passed on to a child.
func TestSecretMissing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string, cfg *Config)
		secret  string
		wantErr string
		wantRun bool
	}{
		{
			name:    "nowhere",
			secret:  "dbpass",
			setup:   func(t *testing.T, dir string, cfg *Config) {},
			wantErr: `secret "dbpass" (env TEST_SECRET): not found: no file %DIR%/dbpass and no BATON_SECRET_dbpass in the agent's environment`,
		},
		{
			name:    "no secrets dir",
			secret:  "dbpass",
			setup:   func(t *testing.T, dir string, cfg *Config) { cfg.SecretsDir = "" },
			wantErr: `not found: no --secrets-dir is given and no BATON_SECRET_dbpass in the agent's environment`,
		},
		{
			name:   "group readable",
			secret: "dbpass",
			setup: func(t *testing.T, dir string, cfg *Config) {
				if runtime.GOOS == "windows" {
					t.Skip("no mode bits on Windows")
				}
				path := filepath.Join(dir, "dbpass")
				if err := os.WriteFile(path, []byte("value\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, 0o640); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "is readable by its group or by others (mode 0640); make it readable by the agent's user only: chmod 600",
		},
		{
			name:   "from the environment",
			secret: "dbpass",
			setup: func(t *testing.T, dir string, cfg *Config) {
				cfg.Env = append(cfg.Env, "BATON_SECRET_dbpass=from-env-value")
			},
			wantRun: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			dir := t.TempDir()
			cfg := b.config()
			cfg.SecretsDir = dir
			tc.setup(t, dir, &cfg)
			b.start(t, cfg)
			s := b.srv.session(t)
			if tc.wantRun {
				st := b.task(6, "env")
				st.SecretEnv = map[string]string{"TEST_SECRET": tc.secret}
				s.startTask(t, st)
				tf, _ := s.finished(t, 6)
				if tf.GetOutcome() != succeeded {
					t.Fatalf("TaskFinished = {%v, %q}, want SUCCEEDED", tf.GetOutcome(), tf.GetError())
				}
				// The child saw exactly the secret's value: redacted in the
				// outputs it wrote.
				if got := tf.GetOutputs()["ENV_TEST_SECRET"]; got != "[secret:dbpass]" {
					t.Errorf("the child saw TEST_SECRET=%q, want the value of BATON_SECRET_dbpass (redacted)", got)
				}
				for k, v := range tf.GetOutputs() {
					if strings.Contains(k, "BATON_SECRET_") || strings.Contains(v, "BATON_SECRET_") {
						t.Errorf("the child saw %s=%s: BATON_SECRET_ variables must not reach children", k, v)
					}
				}
				return
			}
			marker := filepath.Join(t.TempDir(), "ran")
			st := b.task(6, "count", "BATON_TEST_MARKER", marker)
			st.SecretEnv = map[string]string{"TEST_SECRET": tc.secret}
			s.startTask(t, st)
			tf, msgs := s.finished(t, 6)
			want := strings.ReplaceAll(tc.wantErr, "%DIR%", dir)
			if tf.GetOutcome() != startFailed || !strings.Contains(tf.GetError(), want) {
				t.Errorf("TaskFinished = {%v, %q}, want {START_FAILED, ...%q...}", tf.GetOutcome(), tf.GetError(), want)
			}
			for _, m := range msgs {
				if m.GetTaskStarted() != nil {
					t.Errorf("got TaskStarted %v for an attempt whose secret is missing", m.GetTaskStarted())
				}
			}
			if _, err := os.Stat(marker); !os.IsNotExist(err) {
				t.Errorf("the child ran: marker %s: %v", marker, err)
			}
		})
	}
}
