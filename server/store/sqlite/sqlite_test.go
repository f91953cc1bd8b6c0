package sqlite_test

import (
	"context"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/batonhq/baton/server/store"
	"github.com/batonhq/baton/server/store/sqlite"
	"github.com/batonhq/baton/server/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger sends log records to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func newDB(t *testing.T) func(ctx context.Context) (store.Store, error) {
	path := filepath.Join(t.TempDir(), "baton.db")
	return func(ctx context.Context) (store.Store, error) {
		return sqlite.Open(ctx, sqlite.Config{Path: path, Logger: testLogger(t)})
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, storetest.Harness{NewDB: newDB})
}

func TestConfigFromURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		url     string
		want    sqlite.Config
		wantErr string
	}{
		{name: "Absolute", url: "sqlite:///var/lib/baton/baton.db", want: sqlite.Config{Path: "/var/lib/baton/baton.db"}},
		{name: "Relative", url: "sqlite:baton.db", want: sqlite.Config{Path: "baton.db"}},
		{name: "Params", url: "sqlite:///b.db?synchronous=FULL&busy_timeout=10s",
			want: sqlite.Config{Path: "/b.db", Synchronous: "full", BusyTimeout: 10 * time.Second}},
		{name: "Normal", url: "sqlite:///b.db?synchronous=normal", want: sqlite.Config{Path: "/b.db", Synchronous: "normal"}},
		{name: "WindowsDrive", url: "sqlite:///C:/baton/baton.db", want: sqlite.Config{Path: "C:/baton/baton.db"}},
		{name: "Escaped", url: "sqlite:///tmp/a%20b%3F.db", want: sqlite.Config{Path: "/tmp/a b?.db"}},
		{name: "UnknownParam", url: "sqlite:///b.db?journal=off", wantErr: `unknown parameter "journal"`},
		{name: "BadSynchronous", url: "sqlite:///b.db?synchronous=extra", wantErr: "synchronous"},
		{name: "BadBusyTimeout", url: "sqlite:///b.db?busy_timeout=5", wantErr: "busy_timeout"},
		{name: "RepeatedParam", url: "sqlite:///b.db?synchronous=full&synchronous=normal", wantErr: "synchronous given 2 times"},
		{name: "Host", url: "sqlite://host/b.db", wantErr: "host"},
		{name: "NoPath", url: "sqlite://", wantErr: "path is empty"},
		{name: "Scheme", url: "sqlserver:///b.db", wantErr: "scheme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u, err := url.Parse(tc.url)
			if err != nil {
				t.Fatalf("url.Parse(%q) = %v", tc.url, err)
			}
			got, err := sqlite.ConfigFromURL(u)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ConfigFromURL(%q) = %v, want an error containing %q", tc.url, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ConfigFromURL(%q) = %v", tc.url, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("ConfigFromURL(%q) mismatch (-want +got):\n%s", tc.url, diff)
			}
		})
	}
}

func TestOpenConfig(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		cfg     sqlite.Config
		wantErr string
	}{
		{"NoPath", sqlite.Config{}, "Path is required"},
		{"BadSynchronous", sqlite.Config{Path: filepath.Join(dir, "x.db"), Synchronous: "off"}, "Synchronous"},
		{"NegativeBusyTimeout", sqlite.Config{Path: filepath.Join(dir, "x.db"), BusyTimeout: -time.Second}, "BusyTimeout"},
		{"MissingDir", sqlite.Config{Path: filepath.Join(dir, "no", "such", "x.db")}, "open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := sqlite.Open(ctx, tc.cfg)
			if err == nil {
				_ = s.Close() // the test fails on the missing error
				t.Fatalf("Open(%+v) = nil error, want one containing %q", tc.cfg, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Open(%+v) = %v, want an error containing %q", tc.cfg, err, tc.wantErr)
			}
		})
	}
}

// TestOpenPath checks that a path with URI-special characters opens the
// file it names, with the configured settings, and that the data survives
// reopening.
func TestOpenPath(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "odd dir?#%", "baton#1.db")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := sqlite.Open(ctx, sqlite.Config{Path: path, Synchronous: "full", BusyTimeout: time.Second})
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate() = %v", err)
	}
	if _, err := s.JobApply(ctx, &store.JobApplyParams{Name: "j", Spec: []byte(`{}`)}); err != nil {
		t.Fatalf("JobApply() = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database file: %v", err)
	}
	s, err = sqlite.Open(ctx, sqlite.Config{Path: path})
	if err != nil {
		t.Fatalf("Open(again) = %v", err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close(again) = %v", err)
		}
	}()
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate(again) = %v", err)
	}
	if _, err := s.JobGet(ctx, &store.JobGetParams{Name: "j"}); err != nil {
		t.Fatalf("JobGet() after reopening = %v", err)
	}
}
