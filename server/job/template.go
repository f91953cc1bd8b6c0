package job

import (
	"strings"
)

// A template is a string with ${{ expr }} placeholders, compiled. A nil
// template expands to "".
type template []segment

// segment is literal text or one placeholder.
type segment struct {
	lit  string
	prog *program
}

// expand evaluates the placeholders and joins the pieces.
func (t template) expand(task string, v *Vars) (string, error) {
	if len(t) == 1 && t[0].prog == nil {
		return t[0].lit, nil
	}
	var b strings.Builder
	for _, seg := range t {
		if seg.prog == nil {
			b.WriteString(seg.lit)
			continue
		}
		out, err := seg.prog.eval(v)
		if err != nil {
			return "", evalError(task, seg.prog, err)
		}
		native, err := toNative(out, 0)
		if err != nil {
			return "", evalError(task, seg.prog, err)
		}
		s, err := textOf(native)
		if err != nil {
			return "", evalError(task, seg.prog, err)
		}
		b.WriteString(s)
	}
	return b.String(), nil
}

// rawSegment is a piece of a template source.
type rawSegment struct {
	text string
	expr bool
}

// splitTemplate splits s into literal text and placeholder expressions.
// "$${{" stands for a literal "${{". It returns a message when a
// placeholder is not closed or is empty.
func splitTemplate(s string) ([]rawSegment, string) {
	var out []rawSegment
	var lit strings.Builder
	for {
		i := strings.Index(s, "${{")
		if i < 0 {
			lit.WriteString(s)
			break
		}
		if i > 0 && s[i-1] == '$' {
			lit.WriteString(s[:i-1])
			lit.WriteString("${{")
			s = s[i+3:]
			continue
		}
		lit.WriteString(s[:i])
		rest := s[i+3:]
		j := strings.Index(rest, "}}")
		if j < 0 {
			return nil, "unclosed placeholder: \"${{\" without a matching \"}}\" (write \"$${{\" for a literal \"${{\")"
		}
		src := rest[:j]
		if strings.TrimSpace(src) == "" {
			return nil, "empty placeholder \"${{ }}\": put an expression inside, like ${{ params.load_date }}"
		}
		if lit.Len() > 0 {
			out = append(out, rawSegment{text: lit.String()})
			lit.Reset()
		}
		out = append(out, rawSegment{text: src, expr: true})
		s = rest[j+2:]
	}
	if lit.Len() > 0 || len(out) == 0 {
		out = append(out, rawSegment{text: lit.String()})
	}
	return out, ""
}
