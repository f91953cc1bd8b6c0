package server

import (
	"context"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/batonhq/baton/server/store"
)

// needToken guards an HTTP endpoint outside the gateway (/healthz,
// /readyz, /metrics, /openapi.json): while authentication is on and
// PublicMetrics is not set, it needs a valid token of any role in the
// Authorization header. A refusal is audited like a refused RPC.
func (s *Server) needToken(next http.Handler) http.Handler {
	if s.authn == nil || s.cfg.PublicMetrics {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := s.authn.Authenticate(r.Context(), r.Header.Get("Authorization"))
		if err == nil {
			next.ServeHTTP(w, r)
			return
		}
		err = authError(r.Context(), s.log, err)
		st := status.Convert(err)
		id.Peer = r.RemoteAddr
		s.audit.record(r.Context(), &store.AuditRecord{At: s.audit.now(), Who: id.Who(), Peer: id.Peer,
			Method: r.Method + " " + r.URL.Path, Code: st.Code().String(), Message: st.Message()}, false)
		code := http.StatusUnauthorized
		if st.Code() == codes.Unavailable {
			code = http.StatusServiceUnavailable
		} else {
			w.Header().Set("WWW-Authenticate", `Bearer realm="batond"`)
		}
		refuse(w, code, st.Code(), st.Message()+" (or start batond with --public-metrics to serve this path without a token)")
	})
}

// bearerChallenge is the gateway's error handler: the standard one, with
// the WWW-Authenticate header of a 401 as RFC 6750 has it (the standard
// handler puts the status message there).
func bearerChallenge(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if status.Code(err) == codes.Unauthenticated {
		w = challengeWriter{w}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// challengeWriter sets the bearer challenge as the status is written.
type challengeWriter struct{ http.ResponseWriter }

func (c challengeWriter) WriteHeader(code int) {
	c.Header().Set("WWW-Authenticate", `Bearer realm="batond"`)
	c.ResponseWriter.WriteHeader(code)
}

// forwardedFor drops an X-Forwarded-For header the gateway could not pass
// on as gRPC metadata (not printable ASCII, or too long): the gateway would
// then drop its own entry, the client's real address, with it.
func forwardedFor(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if vs := r.Header.Values("X-Forwarded-For"); len(vs) > 0 {
			joined := strings.Join(vs, ", ")
			if len(joined) > 512 || strings.ContainsFunc(joined, func(c rune) bool { return c < ' ' || c > '~' }) {
				r.Header.Del("X-Forwarded-For")
			}
		}
		next.ServeHTTP(w, r)
	})
}
