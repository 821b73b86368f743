package server

import (
	"context"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/internal/auth"
)

// openGRPC reports whether a gRPC method needs no token: health and
// reflection, unless AuthAll.
func (s *Server) openGRPC(fullMethod string) bool {
	if s.opts.Auth == nil {
		return true
	}
	if s.opts.AuthAll {
		return false
	}
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

func (s *Server) checkGRPC(ctx context.Context, fullMethod string) error {
	if s.openGRPC(fullMethod) {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if tok, ok := auth.BearerToken(v); ok && s.opts.Auth.Check(tok) {
			return nil
		}
	}
	s.counters.unauthenticated.Add(1)
	return status.Error(codes.Unauthenticated, "missing or invalid bearer token")
}

func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.checkGRPC(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.checkGRPC(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// queryTokenParams are query parameters that look like credentials: a
// request carrying one is refused, because URLs end up in logs and
// histories.
var queryTokenParams = []string{"access_token", "token", "auth", "authorization", "api_key", "apikey"}

// requireAuth wraps the HTTP faces: without a valid bearer token nothing
// reaches the handler (and so nothing reaches the backend). Health, metrics
// and the API description stay open unless AuthAll (see openHTTP). A /ws client may send the token as the subprotocol
// "bearer.<token>" (browsers cannot set headers); the token then selects
// that subprotocol in the handshake.
func (s *Server) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
		if tok, ok := auth.BearerToken(r.Header.Get("Authorization")); ok && s.opts.Auth.Check(tok) {
			next.ServeHTTP(w, r)
			return
		}
		if r.URL.Path == "/ws" {
			for _, p := range websocketProtocols(r) {
				if tok, ok := strings.CutPrefix(p, "bearer."); ok && s.opts.Auth.Check(tok) {
					next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), subprotocolKey{}, p)))
					return
				}
			}
		}
		s.counters.unauthenticated.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer realm="wsbridge"`)
		http.Error(w, "missing or invalid bearer token", http.StatusUnauthorized)
	})
}

type subprotocolKey struct{}

func websocketProtocols(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
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
	case "/healthz", "/metrics", "/openapi.json", "/", "/dashboard.js", "/dashboard.css", "/dashboard-schema.json":
		return true
	}
	return false
}
