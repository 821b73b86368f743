package server

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsbridge/wsbridge/internal/glob"
	"github.com/wsbridge/wsbridge/internal/statsdecl"
)

// metrics is the server's Prometheus registry: a call-latency histogram,
// and a collector that reads every declared Stats field at scrape time
// (statsdecl.Collector).
type metrics struct {
	reg   *prometheus.Registry
	calls *prometheus.HistogramVec
	// methods may appear as the method label; any other is "other", so
	// that no client-supplied string becomes a label.
	methods map[string]bool
	// patterns (the allow list's, when --metrics-methods is not given)
	// admit the methods they match as labels, up to maxPatternMethods of
	// them: a pattern such as eth_* matches unboundedly many names.
	patterns       []string
	patternMethods sync.Map // method -> struct{}
	patternCount   atomic.Int64
}

// maxPatternMethods bounds the method labels admitted by patterns.
const maxPatternMethods = 200

// newMetrics labels calls by the methods listed (--metrics-methods) or,
// when none are, by those the allow list admits.
func newMetrics(s *Server, methods, allow []string) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), methods: map[string]bool{}}
	if len(methods) == 0 {
		for _, p := range allow {
			if strings.Contains(p, "*") {
				m.patterns = append(m.patterns, p)
			} else {
				methods = append(methods, p)
			}
		}
	}
	for _, name := range methods {
		if utf8.ValidString(name) {
			m.methods[name] = true
		}
	}
	m.calls = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "wsbridge_call_duration_seconds",
		Help:    "Client calls by face (grpc, session, rest, rpc, ws, grpc-typed, rest-typed, connect, grpc-web), outcome (gRPC code) and method (those listed in --metrics-methods, else those --allow-methods admits; others are \"other\").",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"face", "code", "method"})
	m.reg.MustRegister(m.calls, statsdecl.Collector(s.snapshot), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// label is method's label value.
func (m *metrics) label(method string) string {
	if m.methods[method] {
		return method
	}
	if len(m.patterns) == 0 || !utf8.ValidString(method) || !glob.Any(m.patterns, method) {
		return "other"
	}
	if _, ok := m.patternMethods.Load(method); ok {
		return method
	}
	if m.patternCount.Add(1) > maxPatternMethods {
		m.patternCount.Add(-1)
		return "other"
	}
	if _, loaded := m.patternMethods.LoadOrStore(method, struct{}{}); loaded {
		m.patternCount.Add(-1)
	}
	return method
}

func (m *metrics) observe(f face, method string, d time.Duration, err error) {
	code := "OK"
	if err != nil {
		code = mappingFor(err).GRPC.String()
	}
	m.calls.WithLabelValues(faceNames[f], code, m.label(method)).Observe(d.Seconds())
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.counters.metrics.reg, promhttp.HandlerOpts{})
}
