package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/batonhq/baton/agent/internal/redact"
)

// outputCap is how much of $BATON_OUTPUT the agent reads.
const outputCap = 64 << 10

// maxOutputNotes bounds the notes one output file can produce.
const maxOutputNotes = 10

// maxOutputs is how many distinct outputs an attempt may report; the
// control plane refuses a TaskFinished with more.
const maxOutputs = 1024

// readOutputs reads the name=value file a child wrote to $BATON_OUTPUT. A
// missing file means no outputs. Problems with the content (the cap,
// malformed lines, invalid UTF-8) do not fail the attempt: they come back
// as notes for the attempt's log stream. The error is for a file that
// exists but cannot be read. The values of the secrets in red are replaced
// with [secret:NAME] before the file is parsed.
func readOutputs(path string, red *redact.Set) (map[string]string, []string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("open output file: %w", err)
	}
	defer func() { _ = f.Close() }() // read only: the read reports any error
	data, err := io.ReadAll(io.LimitReader(f, outputCap+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read output file: %w", err)
	}
	truncated := len(data) > outputCap
	if truncated {
		data = data[:outputCap]
	}
	outputs, notes := parseOutputs(data, truncated, red)
	if truncated {
		notes = append([]string{fmt.Sprintf("output file is larger than %d bytes; outputs are truncated at the cap", outputCap)}, notes...)
	}
	return outputs, notes, nil
}

// parseOutputs parses name=value lines. It trims a trailing \r, skips blank
// lines and lines starting with '#', trims spaces and byte order marks
// around the name (which must not be empty), keeps the value as written, and lets a later line win
// over an earlier one with the same name. A UTF-8 byte order mark is
// dropped and UTF-16 with a byte order mark (PowerShell's default) is
// decoded. When truncated is set, a last line without its newline was cut
// by the cap and is dropped. The values of the secrets in red are replaced
// with [secret:NAME] in the decoded text, before it is parsed, so that a
// value across lines is replaced too.
func parseOutputs(data []byte, truncated bool, red *redact.Set) (map[string]string, []string) {
	var notes []string
	note := func(format string, args ...any) {
		if len(notes) < maxOutputNotes {
			notes = append(notes, fmt.Sprintf(format, args...))
		} else if len(notes) == maxOutputNotes {
			notes = append(notes, "further problems in the output file are not reported")
		}
	}
	text := red.String(decodeText(data))
	if truncated {
		if i := strings.LastIndexByte(text, '\n'); i >= 0 {
			if i+1 < len(text) {
				note("output file: the last line was cut by the cap and is skipped")
			}
			text = text[:i+1]
		} else {
			note("output file: the first line was cut by the cap and is skipped")
			text = ""
		}
	}
	outputs := make(map[string]string)
	tooMany := false
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSuffix(line, "\r")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			note("output file line %d: no '=' in the line; skipped", n+1)
			continue
		}
		// A byte order mark inside the file (appended files that each
		// began with one) is no part of a name.
		name = strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(name), "\ufeff"))
		if name == "" {
			note("output file line %d: empty name; skipped", n+1)
			continue
		}
		if !utf8.ValidString(name) || !utf8.ValidString(value) {
			note("output file line %d: invalid UTF-8 replaced with U+FFFD", n+1)
			name = strings.ToValidUTF8(name, "\uFFFD")
			value = strings.ToValidUTF8(value, "\uFFFD")
		}
		if _, dup := outputs[name]; !dup && len(outputs) == maxOutputs {
			if !tooMany {
				note("output file line %d: more than %d outputs; this and later new names are dropped", n+1, maxOutputs)
				tooMany = true
			}
			continue
		}
		outputs[name] = value
	}
	if len(outputs) == 0 {
		return nil, notes
	}
	return outputs, notes
}

// decodeText turns an output file's bytes into a string, honouring a byte
// order mark.
func decodeText(data []byte) string {
	switch {
	case bytes.HasPrefix(data, []byte{0xEF, 0xBB, 0xBF}):
		return string(data[3:])
	case bytes.HasPrefix(data, []byte{0xFF, 0xFE}):
		return decodeUTF16(data[2:], false)
	case bytes.HasPrefix(data, []byte{0xFE, 0xFF}):
		return decodeUTF16(data[2:], true)
	}
	return string(data)
}

// decodeUTF16 decodes UTF-16 text; a trailing odd byte is dropped.
func decodeUTF16(data []byte, bigEndian bool) string {
	units := make([]uint16, len(data)/2)
	for i := range units {
		lo, hi := data[2*i], data[2*i+1]
		if bigEndian {
			lo, hi = hi, lo
		}
		units[i] = uint16(lo) | uint16(hi)<<8
	}
	return string(utf16.Decode(units))
}
