package server

import (
	"net/http"
	"time"
)

// The operational endpoints: health and readiness, /metrics, /__stats,
// the REST stats, the dashboard, and (on the admin listener) pprof. They
// are on the HTTP listener unless Options.AdminAddr gives them a listener
// of their own (as Envoy's admin port), where kubelet probes and
// Prometheus read them plainly while the client ports require TLS and
// tokens, and clients see none of them.

// opsRoutes are the operational routes served by the REST gateways.
type opsRoutes struct {
	stats http.Handler // GET /v1/stats
	watch http.Handler // GET /v1/stats:watch
}

// registerOps adds the operational routes to mux.
func (s *Server) registerOps(mux *http.ServeMux, ops *opsRoutes) {
	mux.HandleFunc("/healthz", s.serveHealthz)
	mux.HandleFunc("/readyz", s.serveHealthz)
	mux.HandleFunc("/livez", serveLive)
	mux.HandleFunc("/__stats", s.serveSeedStats)
	mux.Handle("/v1/stats", ops.stats)
	mux.Handle("/v1/stats:watch", ops.watch)
	mux.HandleFunc("GET /{$}", serveDashboard)
	mux.HandleFunc("GET /dashboard.js", serveDashboard)
	mux.HandleFunc("GET /dashboard.css", serveDashboard)
	mux.HandleFunc("GET /dashboard-schema.json", serveDashboardSchema)
	mux.Handle("GET /metrics", s.metricsHandler())
}

// serveLive is liveness: the process serves HTTP. (Readiness, /readyz and
// /healthz, also says whether calls can reach a backend.)
func serveLive(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// adminServer is the admin listener's server: the operational routes and
// Options.AdminHandler at /debug/. It asks for no token (the listener is
// meant for a private address), except what AdminHandler asks itself, but
// checks the Host header (see checkAdminHost).
func (s *Server) adminServer() *http.Server {
	mux := http.NewServeMux()
	s.registerOps(mux, s.admin)
	if s.opts.AdminHandler != nil {
		mux.Handle("/debug/", s.opts.AdminHandler)
	}
	return &http.Server{Handler: s.checkAdminHost(mux), ReadHeaderTimeout: s.opts.ReadHeaderTimeout, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: s.opts.MaxHeaderBytes, HTTP2: http2Limits()}
}
