package dispatch

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestToStatus: the scheduler's reasons reach agents as the codes agents
// act on (ALREADY_EXISTS: retry later; ABORTED and UNAVAILABLE: reconnect).
func TestToStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("an agent named %q is already connected: %w", "a1", ErrNameTaken), codes.AlreadyExists},
		{ErrReplaced, codes.Aborted},
		{Unavailable("control plane is restarting"), codes.Unavailable},
		{errors.New("anything else"), codes.Unavailable},
		{status.Error(codes.PermissionDenied, "no"), codes.PermissionDenied},
	} {
		got := toStatus(tc.err)
		if status.Code(got) != tc.code || status.Convert(got).Message() != tc.err.Error() && status.Code(tc.err) == codes.Unknown {
			t.Errorf("toStatus(%v) = %v, want %v with the same message", tc.err, got, tc.code)
		}
	}
	if !errors.Is(Unavailable("x"), ErrUnavailable) {
		t.Error("Unavailable does not wrap ErrUnavailable")
	}
}
