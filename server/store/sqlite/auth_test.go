package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	_ "modernc.org/sqlite" // the "sqlite" driver, for a raw connection

	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlite"
)

// TestAuditAppendOnly: the audit table refuses an UPDATE from anyone, not
// only through the store's methods (which have none).
func TestAuditAppendOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "baton.db")
	st, err := sqlite.Open(ctx, sqlite.Config{Path: path})
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	defer func() { _ = st.Close() }()
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("Migrate() = %v", err)
	}
	rec := &store.AuditRecord{Who: "token:root", Method: "/baton.v1.JobService/DeleteJob", Job: "etl", Code: "OK"}
	if err := st.AuditAppend(ctx, &store.AuditAppendParams{Records: []*store.AuditRecord{rec}}); err != nil {
		t.Fatalf("AuditAppend() = %v", err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = db.Close() }()
	_, err = db.ExecContext(ctx, `UPDATE audit_log SET who = 'someone-else' WHERE id = ?`, rec.ID)
	if err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("UPDATE audit_log = %v, want refused as append-only", err)
	}
}
