package sqlserver

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	mssql "github.com/microsoft/go-mssqldb"

	"github.com/batonhq/baton/server/store"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	got, err := Config{DSN: "sqlserver://u:p@localhost:1433?database=baton"}.withDefaults()
	if err != nil {
		t.Fatalf("withDefaults() = %v", err)
	}
	if got.Schema != "baton" || got.MaxOpenConns != 32 || got.Logger == nil {
		t.Fatalf("withDefaults() = schema %q, max open %d, logger %v; want baton, 32, a logger", got.Schema, got.MaxOpenConns, got.Logger)
	}
	got, err = Config{DSN: "sqlserver://localhost", Schema: "etl_Baton2", MaxOpenConns: 4}.withDefaults()
	if err != nil || got.Schema != "etl_Baton2" || got.MaxOpenConns != 4 {
		t.Fatalf("withDefaults(set fields) = %+v, %v; want them kept", got, err)
	}
}

// TestConfigInvalid checks that bad configuration is refused, before any
// connection is attempted, with an error naming the field.
func TestConfigInvalid(t *testing.T) {
	t.Parallel()
	const dsn = "sqlserver://u:secret@localhost:1433?database=baton"
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"NoDSN", Config{}, "DSN"},
		{"BadPort", Config{DSN: "sqlserver://u:secret@localhost:port?database=baton"}, "DSN"},
		{"BadDialTimeout", Config{DSN: dsn + "&dial+timeout=soon"}, "DSN"},
		{"Timezone", Config{DSN: dsn + "&timezone=America%2FNew_York"}, "DSN"},
		{"SchemaDigitFirst", Config{DSN: dsn, Schema: "1baton"}, "Schema"},
		{"SchemaDash", Config{DSN: dsn, Schema: "baton-prod"}, "Schema"},
		{"SchemaSpace", Config{DSN: dsn, Schema: "baton prod"}, "Schema"},
		{"SchemaBracket", Config{DSN: dsn, Schema: "baton]; DROP TABLE x; --"}, "Schema"},
		{"SchemaQuote", Config{DSN: dsn, Schema: "bat'on"}, "Schema"},
		{"SchemaDot", Config{DSN: dsn, Schema: "dbo.baton"}, "Schema"},
		{"SchemaTooLong", Config{DSN: dsn, Schema: "b" + strings.Repeat("x", 128)}, "Schema"},
		{"SchemaNonASCII", Config{DSN: dsn, Schema: "batón"}, "Schema"},
		{"NegativeMaxOpenConns", Config{DSN: dsn, MaxOpenConns: -1}, "MaxOpenConns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A cancelled context: if validation let the config through,
			// Open would fail on connecting instead, with another message.
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			s, err := Open(ctx, tc.cfg)
			if err == nil {
				_ = s.Close() // the test fails on the missing error
				t.Fatalf("Open(%+v) = nil error, want one naming %s", tc.cfg, tc.field)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("Open() error = %q, want it to name %s", err, tc.field)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("Open() error = %q repeats the password", err)
			}
		})
	}
}

func TestSchemaNames(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"baton", "_b", "B", "baton_t0123abcd", "select", "b" + strings.Repeat("x", 127)} {
		if err := validateSchema(ok); err != nil {
			t.Errorf("validateSchema(%q) = %v, want nil", ok, err)
		}
	}
	if err := validateSchema(""); err == nil {
		t.Error("validateSchema(\"\") = nil, want an error")
	}
}

func TestRender(t *testing.T) {
	t.Parallel()
	got := render(`IF SCHEMA_ID(N'{{schema_name}}') IS NULL EXEC (N'CREATE SCHEMA {{schema}}'); SELECT 1 FROM {{schema}}.runs`, "select")
	want := `IF SCHEMA_ID(N'select') IS NULL EXEC (N'CREATE SCHEMA [select]'); SELECT 1 FROM [select].runs`
	if got != want {
		t.Fatalf("render() = %q, want %q", got, want)
	}
	for id, text := range renderAll("baton_x") {
		if strings.Contains(text, "{{") {
			t.Errorf("renderAll: statement %s keeps a placeholder", registry[id].name)
		}
	}
}

func TestErrorClassification(t *testing.T) {
	t.Parallel()
	single := func(n int32) error { return mssql.Error{Number: n, Message: fmt.Sprint("error ", n)} }
	// Number is the batch's last error; the classification scans All.
	batch := func(ns ...int32) error {
		e := mssql.Error{Number: ns[len(ns)-1]}
		for _, n := range ns {
			e.All = append(e.All, mssql.Error{Number: n})
		}
		return e
	}
	for _, tc := range []struct {
		name      string
		err       error
		retryable bool
		unique    bool
	}{
		{"Deadlock", single(1205), true, false},
		{"LockTimeout", single(1222), true, false},
		{"SnapshotConflict", single(3960), true, false},
		{"AzureUnavailable", single(40613), true, false},
		{"AzureBusy", single(40501), true, false},
		{"AzureReconfig", single(40197), true, false},
		{"AzureResources", single(49918), true, false},
		{"UniqueConstraint", single(2627), false, true},
		{"UniqueIndex", single(2601), false, true},
		{"Wrapped", fmt.Errorf("run insert: %w", single(1205)), true, false},
		{"DeadlockNotLast", batch(1205, 3621), true, false},
		{"UniqueNotLast", batch(2627, 3621), false, true},
		{"ForeignKey", single(547), false, false},
		{"Syntax", single(102), false, false},
		{"NotServer", errors.New("dial tcp: connection refused"), false, false},
		{"Nil", nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := isRetryable(tc.err); got != tc.retryable {
				t.Errorf("isRetryable(%v) = %v, want %v", tc.err, got, tc.retryable)
			}
			if got := isUnique(tc.err); got != tc.unique {
				t.Errorf("isUnique(%v) = %v, want %v", tc.err, got, tc.unique)
			}
			got := interpretError(tc.err, store.ErrAlreadyActive)
			if tc.err == nil {
				if got != nil {
					t.Fatalf("interpretError(nil) = %v, want nil", got)
				}
				return
			}
			if errors.Is(got, store.ErrAlreadyActive) != tc.unique {
				t.Errorf("interpretError(%v) = %v; sentinel present %v, want %v", tc.err, got, !tc.unique, tc.unique)
			}
			// The driver error stays in the chain.
			var me mssql.Error
			if _, isServer := errors.AsType[mssql.Error](tc.err); isServer && !errors.As(got, &me) {
				t.Errorf("interpretError(%v) = %v, lost the mssql.Error", tc.err, got)
			}
		})
	}
}

func TestConnector(t *testing.T) {
	t.Parallel()
	for _, dsn := range []string{
		"sqlserver://u:p@localhost:1433?database=baton",
		"sqlserver://u:p@localhost?database=baton&timezone=UTC&app+name=batond&encrypt=true",
		"server=localhost;user id=u;password=p;database=baton",
	} {
		c, err := connector(dsn)
		if err != nil {
			t.Errorf("connector(%q) = %v, want a connector", dsn, err)
			continue
		}
		if c.SessionInitSQL != "SET XACT_ABORT ON" {
			t.Errorf("connector(%q).SessionInitSQL = %q, want SET XACT_ABORT ON", dsn, c.SessionInitSQL)
		}
	}
	_, err := connector("sqlserver://u:p@localhost?timezone=America%2FNew_York")
	if err == nil || !strings.Contains(err.Error(), "UTC") {
		t.Fatalf("connector(timezone America/New_York) = %v, want an error saying times are UTC", err)
	}
}
