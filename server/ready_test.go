package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/server/scheduler"
	"github.com/batonhq/baton/server/store"
)

func TestReadyz(t *testing.T) {
	t.Parallel()
	since := time.Date(2026, 12, 7, 3, 0, 0, 0, time.UTC)
	tests := []struct {
		st       scheduler.Status
		code     int
		contains []string
	}{
		{scheduler.Status{Role: scheduler.RoleLeader, Since: since}, http.StatusOK, []string{"ready: leader since 2026-12-07T03:00:00Z"}},
		{scheduler.Status{Role: scheduler.RoleStandby, Since: since}, http.StatusServiceUnavailable, []string{"not ready: standby", "another holds the leader lease"}},
		{scheduler.Status{Role: scheduler.RoleStarting, Since: since}, http.StatusServiceUnavailable, []string{"not ready: starting"}},
		{scheduler.Status{Role: scheduler.RoleStoreUnavailable, Since: since, Err: errors.New("database or disk is full")},
			http.StatusServiceUnavailable, []string{"not ready: store_unavailable", "state store unavailable since 2026-12-07T03:00:00Z", "database or disk is full"}},
	}
	for _, tc := range tests {
		t.Run(string(tc.st.Role), func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			readyHandler(func() scheduler.Status { return tc.st }).ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
			if rec.Code != tc.code {
				t.Errorf("code = %d, want %d", rec.Code, tc.code)
			}
			for _, want := range tc.contains {
				if !strings.Contains(rec.Body.String(), want) {
					t.Errorf("body = %q, want it to contain %q", rec.Body.String(), want)
				}
			}
		})
	}
}

// TestToStatus: domain errors reach API clients as the status codes the
// API documents; anything unexpected is INTERNAL without its details.
func TestToStatus(t *testing.T) {
	t.Parallel()
	unavailable := scheduler.Status{Role: scheduler.RoleStoreUnavailable, Since: time.Now(), Err: errors.New("disk is full")}
	tests := []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("run 7: %w", store.ErrNotFound), codes.NotFound},
		{fmt.Errorf("job j: %w", store.ErrAlreadyActive), codes.AlreadyExists},
		{store.ErrConflict, codes.FailedPrecondition},
		{scheduler.ErrNotActive, codes.FailedPrecondition},
		{scheduler.ErrStopped, codes.Unavailable},
		{fmt.Errorf("standing by: %w", store.ErrNotLeader), codes.Unavailable},
		{unavailable.Error(), codes.Unavailable},
		{context.Canceled, codes.Canceled},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{status.Error(codes.InvalidArgument, "job: required"), codes.InvalidArgument},
		{errors.New("secret detail"), codes.Internal},
	}
	log := slog.New(slog.DiscardHandler)
	for _, tc := range tests {
		got := toStatus(context.Background(), log, tc.err)
		if status.Code(got) != tc.code {
			t.Errorf("toStatus(%v) = %v, want %v", tc.err, status.Code(got), tc.code)
		}
		if tc.code == codes.Internal && strings.Contains(got.Error(), "secret") {
			t.Errorf("toStatus(%v) = %v leaks the error's details", tc.err, got)
		}
	}
	if got := toStatus(context.Background(), log, unavailable.Error()); !strings.Contains(got.Error(), "disk is full") {
		t.Errorf("store unavailable reaches the client as %v, want the store's error named", got)
	}
}
