package server

import (
	"context"
	"net"
	"net/http"
	"strings"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/wsbridge/wsbridge/internal/auth"
	"github.com/wsbridge/wsbridge/internal/glob"
)

// queryTokenParams are query parameters that look like credentials: a
// request carrying one is refused, because URLs end up in logs and
// histories.
var queryTokenParams = []string{"access_token", "token", "auth", "authorization", "api_key", "apikey"}

// wsSubprotocol is the subprotocol a /ws handshake selects when the client
// offers it. A browser, which cannot set headers, sends its token as a
// second offered subprotocol "bearer.<token>"; selecting the fixed name
// keeps the token out of the response (RFC 6455 requires the selected
// subprotocol to be one the client offered, so a browser must offer both).
const wsSubprotocol = "wsbridge"

// maxProtocolHeader bounds the Sec-WebSocket-Protocol header of a /ws
// handshake: a client does not get to try many tokens in one request.
const maxProtocolHeader = 4096

// requireAuth wraps the HTTP faces: a request for a host the gateway does
// not serve (DNS rebinding) is refused first, then one without a valid
// bearer token: nothing reaches the handler (and so nothing reaches the
// backend). Health, metrics, the API description and the dashboard's page
// stay open unless AuthAll (see openHTTP). One token is checked per
// request: the Authorization header's, or for /ws the first subprotocol
// "bearer.<token>".
func (s *Server) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hostAllowed(r.Host, s.loopbackOnly) {
			refuseHost(w)
			s.counters.hostRefused.Add(1)
			return
		}
		q := r.URL.Query()
		for _, p := range queryTokenParams {
			if q.Has(p) {
				s.counters.unauthenticated.Add(1)
				http.Error(w, "credentials in the query string are refused; send Authorization: Bearer <token>", http.StatusUnauthorized)
				return
			}
		}
		if s.opts.Auth == nil || (!s.opts.AuthAll && openHTTP(r.URL.Path)) {
			next.ServeHTTP(w, r)
			return
		}
		tok, ok := auth.BearerToken(r.Header.Get("Authorization"))
		if !ok && r.URL.Path == "/ws" {
			if size := len(strings.Join(r.Header.Values("Sec-WebSocket-Protocol"), ",")); size > maxProtocolHeader {
				s.counters.unauthenticated.Add(1)
				http.Error(w, "Sec-WebSocket-Protocol header too large", http.StatusRequestHeaderFieldsTooLarge)
				return
			}
			tok, ok = firstBearerProtocol(r)
		}
		if ok && s.opts.Auth.Check(tok) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, &identity{token: tok})))
			return
		}
		s.counters.unauthenticated.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer realm="wsbridge"`)
		http.Error(w, "missing or invalid bearer token", http.StatusUnauthorized)
	})
}

// firstBearerProtocol returns the token of the first offered subprotocol
// "bearer.<token>".
func firstBearerProtocol(r *http.Request) (string, bool) {
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if tok, ok := strings.CutPrefix(strings.TrimSpace(p), "bearer."); ok && tok != "" {
				return tok, true
			}
		}
	}
	return "", false
}

// hostAllowed reports whether the Host header names this gateway:
// AllowedHosts (patterns, * any text) when set; otherwise, on a loopback
// listener, loopback names only, so that a web page on a DNS name that
// resolves to 127.0.0.1 (DNS rebinding) cannot reach the gateway; on any
// other listener, every name.
func (s *Server) hostAllowed(hostport string, loopbackListener bool) bool {
	host := hostName(hostport)
	if len(s.opts.AllowedHosts) > 0 {
		return glob.Any(s.opts.AllowedHosts, host)
	}
	if !loopbackListener {
		return true
	}
	ip := net.ParseIP(host)
	return (ip != nil && ip.IsLoopback()) || host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// hostName is the host of a Host header, lower case, without port,
// brackets or a trailing dot.
func hostName(hostport string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
}

func refuseHost(w http.ResponseWriter) {
	http.Error(w, "host not served here (see --allowed-hosts)", http.StatusMisdirectedRequest)
}

// checkAdminHost wraps the admin listener's routes with the client
// listener's Host rule (421 otherwise), so that a page rebinding its name
// to a loopback admin listener reads no stats, metrics or profiles. A
// Host that is an IP address always passes there: kubelet probes and
// Prometheus scrapes name the pod's address, and a rebinding page can only
// name its own DNS name.
func (s *Server) checkAdminHost(next http.Handler) http.Handler {
	loopback := isLoopback(s.adminLn.Addr())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if net.ParseIP(hostName(r.Host)) == nil && !s.hostAllowed(r.Host, loopback) {
			refuseHost(w)
			s.counters.hostRefused.Add(1)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// serveHealthz is GET /healthz: 200 while the gateway is ready (backend
// link not backing off, not shutting down), 503 otherwise.
func (s *Server) serveHealthz(w http.ResponseWriter, r *http.Request) {
	resp, err := s.health.Check(r.Context(), &healthpb.HealthCheckRequest{Service: ""})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		http.Error(w, "not serving", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// openHTTP reports whether an HTTP path needs no token unless AuthAll:
// health, metrics, the API description and the dashboard's page (its data
// comes from the authenticated API).
func openHTTP(path string) bool {
	switch path {
	case "/healthz", "/readyz", "/livez", "/metrics", "/openapi.json", "/", "/dashboard.js", "/dashboard.css", "/dashboard-schema.json":
		return true
	}
	return false
}
