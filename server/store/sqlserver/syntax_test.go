package sqlserver

import (
	"fmt"
	"strings"
	"testing"

	"github.com/antlr4-go/antlr/v4"
	tsqlparser "github.com/bytebase/tsql-parser"
)

// syntaxErrors collects the lexer's and the parser's syntax errors.
type syntaxErrors struct {
	*antlr.DefaultErrorListener
	errs []string
}

func (l *syntaxErrors) SyntaxError(_ antlr.Recognizer, _ any, line, column int, msg string, _ antlr.RecognitionException) {
	// ANTLR lists every token it expected, often hundreds; the start is
	// enough to find the mistake.
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	l.errs = append(l.errs, fmt.Sprintf("line %d:%d: %s", line, column, msg))
}

// parseTSQL parses text as a T-SQL batch with the ANTLR grammar of
// github.com/bytebase/tsql-parser and returns its syntax errors. It
// parses in the fast SLL prediction mode first; only a batch that fails
// there is parsed again in full LL mode, which alone decides (SLL may
// reject input that needs LL's full context, never accept bad input).
func parseTSQL(text string) []string {
	if errs := parseTSQLMode(text, antlr.PredictionModeSLL); len(errs) == 0 {
		return nil
	}
	return parseTSQLMode(text, antlr.PredictionModeLL)
}

func parseTSQLMode(text string, mode int) []string {
	l := &syntaxErrors{DefaultErrorListener: antlr.NewDefaultErrorListener()}
	lexer := tsqlparser.NewTSqlLexer(antlr.NewInputStream(text))
	lexer.RemoveErrorListeners()
	lexer.AddErrorListener(l)
	p := tsqlparser.NewTSqlParser(antlr.NewCommonTokenStream(lexer, antlr.TokenDefaultChannel))
	p.RemoveErrorListeners()
	p.AddErrorListener(l)
	p.GetInterpreter().SetPredictionMode(mode)
	p.BuildParseTrees = false
	p.Tsql_file()
	return l.errs
}

// syntaxCase is one batch to parse.
type syntaxCase struct {
	name string
	text string
}

// allBatches returns every batch the backend can send, rendered for a
// real schema name: each registered statement and each batch of each
// migration file.
func allBatches(t *testing.T, schema string) []syntaxCase {
	t.Helper()
	var cases []syntaxCase
	for _, st := range registry {
		cases = append(cases, syntaxCase{name: "stmt/" + st.name, text: render(st.text, schema)})
	}
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatalf("loadMigrations() error = %v", err)
	}
	for _, m := range ms {
		for i, b := range m.batches {
			cases = append(cases, syntaxCase{name: fmt.Sprintf("migration/%s/batch%d", m.name, i+1), text: render(b, schema)})
		}
	}
	return cases
}

// TestTSQLSyntax parses every statement and migration batch the backend
// can send with a real T-SQL grammar, so a typo fails here rather than on
// the first SQL Server it meets. It runs without a server.
func TestTSQLSyntax(t *testing.T) {
	t.Parallel()

	// The check must be able to fail: a broken statement is rejected.
	for _, bad := range []string{
		"SELECT id FROM [baton].runs WHERE",
		"UPDATE [baton].runs SET WHERE id = @id",
		"INSERT INTO [baton].runs (id) VALUES (1",
	} {
		if errs := parseTSQL(bad); len(errs) == 0 {
			t.Errorf("parseTSQL(%q) found no syntax error, want at least one", bad)
		}
	}

	cases := allBatches(t, "baton_t1234")
	if len(cases) < len(registry)+10 {
		t.Fatalf("collected %d batches, want every registered statement (%d) and the migrations", len(cases), len(registry))
	}
	for _, tc := range cases {
		if strings.Contains(tc.text, "{{") {
			t.Errorf("%s: unrendered placeholder in:\n%s", tc.name, tc.text)
			continue
		}
		if errs := parseTSQL(tc.text); len(errs) > 0 {
			t.Errorf("%s: syntax errors:\n  %s\nin:\n%s", tc.name, strings.Join(errs, "\n  "), tc.text)
		}
	}
}

// TestRegistry checks that statement names are unique and every statement
// is registered once.
func TestRegistry(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for i, st := range registry {
		if st.id != i {
			t.Errorf("registry[%d].id = %d, want %d", i, st.id, i)
		}
		if seen[st.name] {
			t.Errorf("statement %q registered twice", st.name)
		}
		seen[st.name] = true
		if strings.TrimSpace(st.text) == "" {
			t.Errorf("statement %q is empty", st.name)
		}
	}
}
