package server

import (
	"errors"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/internal/glob"
	"github.com/wsbridge/wsbridge/internal/statsdecl"
)

// metrics is the server's Prometheus registry: a call-latency histogram,
// a request-latency histogram and an error counter per backend, the build
// info, and a collector that reads every declared Stats field at scrape
// time (statsdecl.Collector).
type metrics struct {
	reg   *prometheus.Registry
	calls *prometheus.HistogramVec
	// backendTook and backendErrors are labelled by backend: its display
	// URL (bridge.DisplayURL), which the configuration names, never a
	// client. Their other labels take the values of backendOutcome and
	// backendErrorClass, a bounded set.
	backendTook   *prometheus.HistogramVec
	backendErrors *prometheus.CounterVec
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

// latencyBuckets are the buckets of both latency histograms, in seconds.
var latencyBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// newMetrics labels calls by the methods listed (opts.MetricsMethods) or,
// when none are, by those the allow list admits.
func newMetrics(s *Server, opts Options) *metrics {
	methods, allow := opts.MetricsMethods, opts.Bridge.AllowMethods
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
		Buckets: latencyBuckets,
	}, []string{"face", "code", "method"})
	m.backendTook = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "wsbridge_backend_request_duration_seconds",
		Help: "Requests written to each backend, from the write to their end, by outcome: ok, backend_error (answered with a JSON-RPC error), " +
			"malformed_reply, reply_lost (its connection broke first), deadline_exceeded (no answer in time).",
		Buckets: latencyBuckets,
	}, []string{"backend", "outcome"})
	m.backendErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsbridge_backend_request_errors_total",
		Help: "Requests written to each backend that failed, by class: the JSON-RPC error code's class when it answered with an error " +
			"(parse_error, invalid_request, method_not_found, invalid_params, internal_error, server_error, application), " +
			"else the transport reason (reply_lost, deadline_exceeded, malformed_reply).",
	}, []string{"backend", "class"})
	version, commit := opts.Version, opts.Commit
	if version == "" {
		version = "unknown"
	}
	if commit == "" {
		commit = "unknown"
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "wsbridge_build_info",
		Help:        "1, labelled with the gateway's version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit, "goversion": runtime.Version()},
	})
	build.Set(1)
	m.reg.MustRegister(m.calls, m.backendTook, m.backendErrors, build, statsdecl.Collector(s.snapshot),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// transportClasses are the classes of backendErrorClass that are no
// JSON-RPC error answer.
var transportClasses = []string{bridge.CodeReplyLost.String(), bridge.CodeDeadlineExceeded.String(), bridge.CodeMalformedReply.String()}

// addBackends makes each backend's series at start, at zero, so that a
// backend without requests yet has them (a rate is 0, not absent).
func (m *metrics) addBackends(backends []bridge.BackendStats) {
	for _, be := range backends {
		m.backendTook.WithLabelValues(be.URL, "ok")
		for _, class := range append(rpcClasses[:], transportClasses...) {
			m.backendErrors.WithLabelValues(be.URL, class)
		}
	}
}

// backendRequest takes the end of one request written to backend
// (bridge.Options.OnBackendRequest).
func (m *metrics) backendRequest(backend string, took time.Duration, err error) {
	m.backendTook.WithLabelValues(backend, backendOutcome(err)).Observe(took.Seconds())
	if err != nil {
		m.backendErrors.WithLabelValues(backend, backendErrorClass(err)).Inc()
	}
}

// backendOutcome is "ok", or the name of err's bridge.Code ("internal"
// for an error that has none).
func backendOutcome(err error) string {
	if err == nil {
		return "ok"
	}
	if code := bridge.CodeOf(err); slices.Contains(bridgeCodes, code) {
		return code.String()
	}
	return "internal"
}

// bridgeCodes are the codes backendOutcome names.
var bridgeCodes = bridge.Codes()

// backendErrorClass is the class of a JSON-RPC error answer (rpcClasses),
// or else backendOutcome's name for err.
func backendErrorClass(err error) string {
	var be *bridge.Error
	if errors.As(err, &be) && be.Code == bridge.CodeBackendError && be.RPC != nil {
		return rpcClasses[rpcClass(be.RPC.Code)]
	}
	return backendOutcome(err)
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
