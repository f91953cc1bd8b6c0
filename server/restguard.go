package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"

	"google.golang.org/grpc/codes"
)

// MaxRESTBody caps a REST request body. A job file is at most 1 MiB; as a
// JSON string it may take up to twice that, plus the request around it.
const MaxRESTBody = 4 << 20

// restGuard stands in front of the REST gateway and refuses what a web
// page can make a browser send to it:
//   - a body that is not JSON (a cross-site form or text/plain POST needs
//     no CORS preflight): 415;
//   - a request whose Origin is another site's: 403;
//   - on a gateway bound to loopback, a Host that is not a loopback name
//     (DNS rebinding: evil.example resolving to 127.0.0.1): 403;
//   - a body larger than MaxRESTBody, refused before it is read whole: 413.
type restGuard struct {
	next http.Handler
	// loopback is set when the gateway listens on loopback only.
	loopback bool
	// hosts are Host names served besides loopback ones (a reverse proxy's
	// name); origins are Origins allowed besides the gateway's own.
	hosts, origins map[string]bool
}

func newRESTGuard(next http.Handler, listen net.Addr, hosts, origins []string) *restGuard {
	g := &restGuard{next: next, hosts: map[string]bool{}, origins: map[string]bool{}}
	if ta, ok := listen.(*net.TCPAddr); ok && ta.IP.IsLoopback() {
		g.loopback = true
	}
	for _, h := range hosts {
		g.hosts[strings.ToLower(h)] = true
	}
	for _, o := range origins {
		g.origins[strings.ToLower(strings.TrimSuffix(o, "/"))] = true
	}
	return g
}

func (g *restGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host := hostName(r.Host)
	if g.loopback && !isLoopbackName(host) && !g.hosts[host] {
		refuse(w, http.StatusForbidden, codes.PermissionDenied, fmt.Sprintf(
			"Host %q is not served: this batond listens on loopback, so it answers only localhost, 127.0.0.1 and [::1] "+
				"(a page that made its own name resolve to 127.0.0.1 is refused); add a name with --http-allow-host", r.Host))
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" && !g.originOK(origin, r.Host) {
		refuse(w, http.StatusForbidden, codes.PermissionDenied, fmt.Sprintf(
			"cross-site request from Origin %q refused; allow it with --http-allow-origin", origin))
		return
	}
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if err != nil || mt != "application/json" {
			refuse(w, http.StatusUnsupportedMediaType, codes.InvalidArgument,
				"the request body must be JSON: send Content-Type: application/json")
			return
		}
		if r.ContentLength > MaxRESTBody {
			refuse(w, http.StatusRequestEntityTooLarge, codes.ResourceExhausted, tooLarge)
			return
		}
		// Read it here, bounded, so a body without a length is refused the
		// same way and the gateway never holds more than the cap.
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRESTBody))
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			refuse(w, http.StatusRequestEntityTooLarge, codes.ResourceExhausted, tooLarge)
			return
		case err != nil:
			refuse(w, http.StatusBadRequest, codes.InvalidArgument, "cannot read the request body: "+err.Error())
			return
		}
		if !json.Valid(body) {
			refuse(w, http.StatusBadRequest, codes.InvalidArgument,
				`the request body is not JSON; REST takes JSON (a job file goes in as {"source": "<the YAML>"})`)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	g.next.ServeHTTP(w, r)
}

var tooLarge = fmt.Sprintf("the request body is larger than %d MiB (a job file may be at most 1 MiB)", MaxRESTBody>>20)

// originOK reports whether a request's Origin is the gateway's own (same
// host and port as the request) or an allowed one.
func (g *restGuard) originOK(origin, host string) bool {
	o := strings.ToLower(strings.TrimSuffix(origin, "/"))
	if g.origins[o] {
		return true
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	return strings.EqualFold(u.Host, host)
}

// hostName returns the lower-cased name of a Host header, without port or
// brackets.
func hostName(hostport string) string {
	h := hostport
	if hh, _, err := net.SplitHostPort(hostport); err == nil {
		h = hh
	}
	return strings.ToLower(strings.Trim(h, "[]"))
}

func isLoopbackName(h string) bool {
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// refuse answers with the gateway's error shape: {"code": N, "message": …}.
func refuse(w http.ResponseWriter, httpStatus int, code codes.Code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": int(code), "message": msg})
}
