package sqlserver

import (
	"fmt"
	"regexp"
	"strings"
)

// stmt is one statement batch the backend sends. Every statement is
// declared once, at package level, through [register]; the registry is
// what TestTSQLSyntax parses, so no statement text is built at run time.
type stmt struct {
	id   int
	name string
	// text holds {{schema}} and {{schema_name}} placeholders; see render.
	text string
}

// registry lists every registered statement in registration order.
var registry []*stmt

// register declares a statement. Names are unique (a test checks).
func register(name, text string) *stmt {
	s := &stmt{id: len(registry), name: name, text: text}
	registry = append(registry, s)
	return s
}

// schemaRE is the form a schema name must have. It keeps the name safe to
// template into identifiers and string literals.
var schemaRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

func validateSchema(name string) error {
	if !schemaRE.MatchString(name) {
		return fmt.Errorf("sqlserver: config: Schema %q: want a letter or underscore followed by up to 127 letters, digits or underscores", name)
	}
	return nil
}

// render replaces the schema placeholders of a statement or migration
// batch: {{schema}} becomes the bracket-quoted identifier (safe for
// reserved words) and {{schema_name}} the bare name, for use inside
// string literals. schema must have passed validateSchema.
func render(text, schema string) string {
	return strings.NewReplacer("{{schema}}", "["+schema+"]", "{{schema_name}}", schema).Replace(text)
}

// renderAll renders every registered statement for schema, indexed by id.
func renderAll(schema string) []string {
	out := make([]string, len(registry))
	for _, s := range registry {
		out[s.id] = render(s.text, schema)
	}
	return out
}
