package sqlserver

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
)

func TestSplitBatches(t *testing.T) {
	t.Parallel()
	script := "-- header comment\n" +
		"CREATE TABLE a (id INT);\n" +
		"GO\n" +
		"/* a block\n   comment */\n" +
		"go\n" +
		"INSERT INTO a VALUES (1); -- GO in a comment is not a separator\n" +
		"SELECT N'GO' AS x;\n" +
		"  GO  \n" +
		"\n" +
		"GO\n" +
		"SELECT 2\n"
	var got []string
	for _, b := range splitBatches(script) {
		got = append(got, strings.TrimSpace(b))
	}
	want := []string{
		"-- header comment\nCREATE TABLE a (id INT);",
		"INSERT INTO a VALUES (1); -- GO in a comment is not a separator\nSELECT N'GO' AS x;",
		"SELECT 2",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("splitBatches() mismatch (-want +got):\n%s", diff)
	}
}

func TestLoadMigrations(t *testing.T) {
	t.Parallel()
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatalf("loadMigrations(embedded) = %v", err)
	}
	if len(ms) == 0 || ms[0].version != 1 {
		t.Fatalf("loadMigrations(embedded) = %d migrations, want version 1 first", len(ms))
	}
	goLine := regexp.MustCompile(`(?im)^\s*GO\s*$`)
	for _, m := range ms {
		for i, b := range m.batches {
			if goLine.MatchString(b) {
				t.Errorf("%s batch %d still holds a GO line", m.name, i+1)
			}
			r := render(b, "baton_t1")
			if strings.Contains(r, "{{") || strings.Contains(r, "}}") {
				t.Errorf("%s batch %d keeps a placeholder after render", m.name, i+1)
			}
		}
	}
	// CREATE SCHEMA must be alone in its batch; the runner does it, not a
	// migration file, which always names the schema through the template.
	for _, m := range ms {
		for i, b := range m.batches {
			if regexp.MustCompile(`(?i)CREATE\s+SCHEMA`).MatchString(b) {
				t.Errorf("%s batch %d creates a schema; the runner does that", m.name, i+1)
			}
			if regexp.MustCompile(`(?i)\b(baton|dbo)\.\w`).MatchString(stripComments(b)) {
				t.Errorf("%s batch %d names a schema literally; use {{schema}}", m.name, i+1)
			}
		}
	}

	for _, tc := range []struct {
		name    string
		fs      fstest.MapFS
		wantErr string
	}{
		{"Gap", fstest.MapFS{
			"migrations/0001_a.sql": {Data: []byte("SELECT 1")},
			"migrations/0003_c.sql": {Data: []byte("SELECT 3")},
		}, "want 2"},
		{"BadName", fstest.MapFS{"migrations/init.sql": {Data: []byte("SELECT 1")}}, "version number"},
		{"Zero", fstest.MapFS{"migrations/0000_a.sql": {Data: []byte("SELECT 1")}}, "version number"},
		{"Empty", fstest.MapFS{"migrations/0001_a.sql": {Data: []byte("-- nothing\nGO\n")}}, "no statements"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadMigrations(tc.fs)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("loadMigrations() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func stripComments(s string) string {
	return regexp.MustCompile(`--[^\n]*`).ReplaceAllString(s, "")
}

// TestMigrationVersionsMatchSQLite checks that both backends number their
// schema versions alike.
func TestMigrationVersionsMatchSQLite(t *testing.T) {
	t.Parallel()
	versions := func(dir string) []int {
		t.Helper()
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("ReadDir(%s) = %v", dir, err)
		}
		var vs []int
		for _, e := range entries {
			num, _, ok := strings.Cut(e.Name(), "_")
			v, err := strconv.Atoi(num)
			if ok && err == nil && strings.HasSuffix(e.Name(), ".sql") {
				vs = append(vs, v)
			}
		}
		slices.Sort(vs)
		return vs
	}
	if diff := cmp.Diff(versions("../sqlite/migrations"), versions("migrations")); diff != "" {
		t.Fatalf("migration versions differ (-sqlite +sqlserver):\n%s", diff)
	}
}

// TestDropSchemaCoversTables checks that DropSchema drops every table the
// migrations create, and only after the tables that reference it.
func TestDropSchemaCoversTables(t *testing.T) {
	t.Parallel()
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatalf("loadMigrations() = %v", err)
	}
	created := []string{"schema_migrations"}
	refs := map[string][]string{} // table -> tables it references
	createRE := regexp.MustCompile(`(?i)CREATE\s+TABLE\s+\{\{schema\}\}\.(\w+)`)
	refRE := regexp.MustCompile(`(?i)REFERENCES\s+\{\{schema\}\}\.(\w+)`)
	alterRE := regexp.MustCompile(`(?i)ALTER\s+TABLE\s+\{\{schema\}\}\.(\w+)`)
	for _, m := range ms {
		for _, b := range m.batches {
			var table string
			if c := createRE.FindStringSubmatch(b); c != nil {
				table = c[1]
				created = append(created, table)
			} else if a := alterRE.FindStringSubmatch(b); a != nil {
				continue // FK_task_instances_attempt: DropSchema drops it first
			}
			for _, r := range refRE.FindAllStringSubmatch(b, -1) {
				refs[table] = append(refs[table], r[1])
			}
		}
	}
	slices.Sort(created)
	have := slices.Clone(dropTables)
	slices.Sort(have)
	if diff := cmp.Diff(created, have); diff != "" {
		t.Fatalf("dropTables does not list the created tables (-created +dropTables):\n%s", diff)
	}
	pos := map[string]int{}
	for i, tbl := range dropTables {
		pos[tbl] = i
		if !strings.Contains(qDropSchema.text, "DROP TABLE IF EXISTS {{schema}}."+tbl+";") {
			t.Errorf("drop_schema does not drop %s", tbl)
		}
	}
	for tbl, rs := range refs {
		for _, r := range rs {
			if r != tbl && pos[tbl] > pos[r] {
				t.Errorf("dropTables drops %s before %s, which references it", r, tbl)
			}
		}
	}
}

// TestConstraintsNamed checks that every constraint the migrations (and
// the runner's own table) declare is named, so a later migration can
// alter or drop it by name on every server.
func TestConstraintsNamed(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{
		"CREATE TABLE x (a INT NOT NULL DEFAULT 0)",
		"CREATE TABLE x (a INT NOT NULL PRIMARY KEY)",
		"CREATE TABLE x (a INT NOT NULL, CHECK (a > 0))",
		"CREATE TABLE x (a INT NOT NULL REFERENCES y (id))",
		"CREATE TABLE x (a INT NOT NULL, UNIQUE (a))",
	} {
		if constraintProblem(bad) == "" {
			t.Errorf("constraintProblem(%q) found nothing, want an unnamed constraint", bad)
		}
	}
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatalf("loadMigrations() = %v", err)
	}
	texts := []string{qMigrationCreateTable.text}
	for _, m := range ms {
		texts = append(texts, m.batches...)
	}
	for _, text := range texts {
		if p := constraintProblem(text); p != "" {
			t.Errorf("%s in:\n%s", p, text)
		}
	}
}

var (
	constraintKW    = regexp.MustCompile(`(?i)\b(DEFAULT|CHECK|PRIMARY\s+KEY|UNIQUE|FOREIGN\s+KEY)\b`)
	namedConstraint = regexp.MustCompile(`(?i)\bCONSTRAINT\s+\w+\s+(DEFAULT|CHECK|PRIMARY\s+KEY|UNIQUE|FOREIGN\s+KEY)\b`)
	uniqueIndex     = regexp.MustCompile(`(?i)\bCREATE\s+UNIQUE\b`)
	references      = regexp.MustCompile(`(?i)\bREFERENCES\b`)
	fkReferences    = regexp.MustCompile(`(?i)\bCONSTRAINT\s+\w+\s+FOREIGN\s+KEY\s*\([^)]*\)\s*REFERENCES\b`)
)

// constraintProblem reports an unnamed constraint in a DDL batch, or "".
func constraintProblem(text string) string {
	text = stripComments(text)
	all := len(constraintKW.FindAllString(text, -1)) - len(uniqueIndex.FindAllString(text, -1))
	if n := len(namedConstraint.FindAllString(text, -1)); n != all {
		return fmt.Sprintf("%d constraints, %d of them named", all, n)
	}
	if refs, fks := len(references.FindAllString(text, -1)), len(fkReferences.FindAllString(text, -1)); refs != fks {
		return fmt.Sprintf("%d REFERENCES, %d in named FOREIGN KEY constraints", refs, fks)
	}
	return ""
}
