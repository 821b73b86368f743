package server

import (
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsbridge/wsbridge/internal/statsdecl"
)

var faceNames = map[face]string{faceGRPC: "grpc", faceREST: "rest", faceRPC: "rpc", faceWS: "ws", faceTyped: "grpc-typed"}

// metrics is the server's Prometheus registry: a call-latency histogram,
// and a collector that reads every declared Stats field at scrape time
// (statsdecl.Collector).
type metrics struct {
	reg   *prometheus.Registry
	calls *prometheus.HistogramVec
	// methods may appear as the method label; any other is "other", so
	// that no client-supplied string becomes a label.
	methods map[string]bool
}

func newMetrics(s *Server, methods []string) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), methods: map[string]bool{}}
	for _, name := range methods {
		if utf8.ValidString(name) {
			m.methods[name] = true
		}
	}
	m.calls = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "wsbridge_call_duration_seconds",
		Help:    "Client calls by face (grpc, rest, rpc, ws), outcome (gRPC code) and method (those listed in --metrics-methods; others are \"other\").",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"face", "code", "method"})
	m.reg.MustRegister(m.calls, statsdecl.Collector(s.snapshot), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(f face, method string, d time.Duration, err error) {
	code := "OK"
	if err != nil {
		code = mappingFor(err).GRPC.String()
	}
	if !m.methods[method] {
		method = "other"
	}
	m.calls.WithLabelValues(faceNames[f], code, method).Observe(d.Seconds())
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.counters.metrics.reg, promhttp.HandlerOpts{})
}
