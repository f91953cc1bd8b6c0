package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/batonhq/baton/agent/internal/redact"
)

// SecretEnvPrefix starts the agent's environment variables that hold
// secrets: BATON_SECRET_<NAME> is the secret NAME when Config.SecretsDir
// has no file of that name. These variables are never passed on to
// children.
const SecretEnvPrefix = "BATON_SECRET_"

// maxSecretSize bounds a secret file.
const maxSecretSize = 64 << 10

// secretNameRE is the control plane's rule for secret names: a file name
// in the secrets directory (never "." or "..", no separator) and the end
// of a BATON_SECRET_ variable.
var secretNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// splitSecretEnv returns env without the BATON_SECRET_ variables, and
// those variables' values by secret name (folded to lower case on
// Windows, where environment names ignore case).
func splitSecretEnv(env []string) ([]string, map[string]string) {
	out := make([]string, 0, len(env))
	secrets := make(map[string]string)
	for _, kv := range env {
		name, val, _ := strings.Cut(kv, "=")
		key, ok := cutSecretEnv(name)
		if !ok {
			out = append(out, kv)
			continue
		}
		if key != "" {
			secrets[key] = val
		}
	}
	return out, secrets
}

func cutSecretEnv(name string) (string, bool) {
	if runtime.GOOS == "windows" {
		if len(name) < len(SecretEnvPrefix) || !strings.EqualFold(name[:len(SecretEnvPrefix)], SecretEnvPrefix) {
			return "", false
		}
		return strings.ToLower(name[len(SecretEnvPrefix):]), true
	}
	rest, ok := strings.CutPrefix(name, SecretEnvPrefix)
	return rest, ok
}

// secretError is a secret a task needs that the agent cannot give it:
// the attempt fails without starting anything.
type secretError struct{ msg string }

func (e *secretError) Error() string { return e.msg }

// resolveSecrets returns the environment entries (NAME=value, sorted by
// name) of a task's secret references (env name -> secret name), and the
// secrets to redact from its output: each value, and on Windows also the
// bytes a child prints it as (secretVariants). Each secret is read from
// Config.SecretsDir/NAME when that file exists, else from the agent's
// BATON_SECRET_NAME variable. Errors name the secret and where the agent
// looked.
func (a *Agent) resolveSecrets(refs map[string]string) ([]string, []redact.Secret, error) {
	if len(refs) == 0 {
		return nil, nil, nil
	}
	names := make([]string, 0, len(refs))
	for k := range refs {
		names = append(names, k)
	}
	slices.Sort(names)
	var (
		env     []string
		secrets []redact.Secret
	)
	for _, envName := range names {
		name := refs[envName]
		if !secretNameRE.MatchString(name) {
			return nil, nil, &secretError{fmt.Sprintf("start_task.secret_env.%s: invalid secret name %q", envName, name)}
		}
		val, err := a.secret(name)
		if err != nil {
			return nil, nil, &secretError{fmt.Sprintf("secret %q (env %s): %v", name, envName, err)}
		}
		env = append(env, envName+"="+val)
		secrets = append(secrets, redact.Secret{Name: name, Value: val})
		if len(val) >= redact.MinLen {
			for _, v := range secretVariants(val) {
				secrets = append(secrets, redact.Secret{Name: name, Value: v})
			}
		}
	}
	return env, secrets, nil
}

// secret looks a secret up: its file in the secrets directory first, then
// the agent's environment.
func (a *Agent) secret(name string) (string, error) {
	envName := SecretEnvPrefix + name
	var looked []string
	if dir := a.cfg.SecretsDir; dir != "" {
		path := filepath.Join(dir, name)
		val, err := readSecretFile(path)
		if err == nil {
			return val, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		looked = append(looked, "no file "+path)
	} else {
		looked = append(looked, "no --secrets-dir is given")
	}
	key := name
	if runtime.GOOS == "windows" {
		key = strings.ToLower(name)
	}
	if val, ok := a.secretEnv[key]; ok {
		if strings.ContainsRune(val, 0) {
			return "", fmt.Errorf("%s holds a NUL byte, which no environment variable can", envName)
		}
		return val, nil
	}
	looked = append(looked, "no "+envName+" in the agent's environment")
	return "", fmt.Errorf("not found: %s", strings.Join(looked, " and "))
}

// readSecretFile reads a secret file: a regular file of at most
// maxSecretSize bytes that, on Unix, neither its group nor others may read.
// One trailing newline (\n or \r\n) is dropped. On Windows the file is
// text: a byte order mark is dropped, UTF-16 with one decoded, and
// anything else must be UTF-8.
func readSecretFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o044 != 0 {
		return "", fmt.Errorf("%s is readable by its group or by others (mode %#o); make it readable by the agent's user only: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }() // read only
	b, err := io.ReadAll(io.LimitReader(f, maxSecretSize+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxSecretSize {
		return "", fmt.Errorf("%s is larger than %d bytes", path, maxSecretSize)
	}
	s := string(b)
	if runtime.GOOS == "windows" {
		// Windows editors and PowerShell write a byte order mark
		// (Set-Content -Encoding utf8), and PowerShell 5.1's Out-File and
		// > write UTF-16: the secret is the text, not the mark.
		s = decodeText(b)
	}
	if t, ok := strings.CutSuffix(s, "\n"); ok {
		s = strings.TrimSuffix(t, "\r")
	}
	if strings.ContainsRune(s, 0) {
		return "", fmt.Errorf("%s holds a NUL byte, which no environment variable can", path)
	}
	if runtime.GOOS == "windows" && !utf8.ValidString(s) {
		// Windows hands a child its environment as UTF-16: bytes that are
		// not UTF-8 would reach it as U+FFFD, a value other than the file's.
		return "", fmt.Errorf("%s is not UTF-8 text (an ANSI code page?): save it as UTF-8, for example with PowerShell's Set-Content -Encoding utf8", path)
	}
	return s, nil
}
