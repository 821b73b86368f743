package server

import (
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

var faceNames = map[face]string{faceGRPC: "grpc", faceREST: "rest", faceRPC: "rpc", faceWS: "ws"}

// metrics is the server's Prometheus registry: a call-latency histogram,
// and a collector that reads every Stats field at scrape time (so that
// /metrics, GetStats and /__stats never disagree).
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
	m.reg.MustRegister(m.calls, statsCollector{s}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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

// statsCollector turns a Stats snapshot into metrics.
type statsCollector struct{ s *Server }

type statMetric struct {
	desc  *prometheus.Desc
	kind  prometheus.ValueType
	value func(*wsbridgev1.Stats) float64
}

func counter(name, help string, v func(*wsbridgev1.Stats) uint64) statMetric {
	return statMetric{prometheus.NewDesc("wsbridge_"+name, help, nil, nil), prometheus.CounterValue,
		func(st *wsbridgev1.Stats) float64 { return float64(v(st)) }}
}

func gauge(name, help string, v func(*wsbridgev1.Stats) float64) statMetric {
	return statMetric{prometheus.NewDesc("wsbridge_"+name, help, nil, nil), prometheus.GaugeValue, v}
}

var statMetrics = []statMetric{
	counter("requests_handled_total", "Client requests (calls and notifications) on every face.", (*wsbridgev1.Stats).GetRequestsHandled),
	counter("ws_upgrades_total", "WebSocket upgrades accepted from clients.", (*wsbridgev1.Stats).GetWsUpgrades),
	counter("http_proxied_total", "Client requests over HTTP (REST and /rpc).", (*wsbridgev1.Stats).GetHttpProxied),
	counter("grpc_calls_total", "Client requests over gRPC.", (*wsbridgev1.Stats).GetGrpcCalls),
	counter("messages_proxied_total", "JSON-RPC messages written to or read from the backend.", (*wsbridgev1.Stats).GetMessagesProxied),
	counter("backend_connects_total", "Successful backend dials.", (*wsbridgev1.Stats).GetBackendConnects),
	counter("backend_reconnects_total", "Successful backend dials after a loss.", (*wsbridgev1.Stats).GetBackendReconnects),
	counter("backend_dial_failures_total", "Failed backend dials.", (*wsbridgev1.Stats).GetDialFailures),
	counter("errors_total", "Client requests that ended with an error.", (*wsbridgev1.Stats).GetErrors),
	counter("backend_errors_total", "Client requests answered with a backend JSON-RPC error.", (*wsbridgev1.Stats).GetBackendErrors),
	counter("timeouts_total", "Calls that hit their deadline.", (*wsbridgev1.Stats).GetTimeouts),
	counter("late_responses_total", "Backend replies after their caller gave up.", (*wsbridgev1.Stats).GetLateResponses),
	counter("unknown_responses_total", "Backend replies that matched no call.", (*wsbridgev1.Stats).GetUnknownResponses),
	counter("malformed_frames_total", "Backend frames that were not valid JSON-RPC.", (*wsbridgev1.Stats).GetMalformedFrames),
	counter("backend_notifications_total", "Notifications received from the backend.", (*wsbridgev1.Stats).GetBackendNotifications),
	counter("notifications_delivered_total", "Notifications delivered to consumers.", (*wsbridgev1.Stats).GetNotificationsDelivered),
	counter("slow_consumers_total", "Consumers ended because they could not keep up (their notifications dropped).", (*wsbridgev1.Stats).GetSlowConsumers),
	counter("resubscribes_total", "Subscriptions re-issued after a reconnect.", (*wsbridgev1.Stats).GetResubscribes),
	counter("rejected_total", "Calls refused at the in-flight limit.", (*wsbridgev1.Stats).GetRejected),
	counter("unauthenticated_total", "Requests refused for a missing or invalid token.", (*wsbridgev1.Stats).GetUnauthenticated),
	gauge("backend_connected", "1 while a backend connection is open.", func(st *wsbridgev1.Stats) float64 {
		if st.GetBackendConnected() {
			return 1
		}
		return 0
	}),
	gauge("backend_conns_open", "Open backend connections.", func(st *wsbridgev1.Stats) float64 { return float64(st.GetBackendConnsOpen()) }),
	gauge("active_clients", "Clients connected now.", func(st *wsbridgev1.Stats) float64 { return float64(st.GetActiveClients()) }),
	gauge("ws_clients", "Clients connected over /ws now.", func(st *wsbridgev1.Stats) float64 { return float64(st.GetWsClients()) }),
	gauge("in_flight", "Calls not yet ended.", func(st *wsbridgev1.Stats) float64 { return float64(st.GetInFlight()) }),
	gauge("subscriptions", "Live backend subscriptions.", func(st *wsbridgev1.Stats) float64 { return float64(st.GetSubscriptions()) }),
	gauge("requests_per_second", "Requests per second over the last 10 seconds.", (*wsbridgev1.Stats).GetRecentRequestsPerSecond),
	gauge("uptime_seconds", "Seconds since start.", func(st *wsbridgev1.Stats) float64 { return float64(st.GetUptimeMs()) / 1000 }),
}

var (
	pendingDesc = prometheus.NewDesc("wsbridge_pending_calls", "Requests waiting for a backend reply (the pending table).", nil, nil)
	stateDesc   = prometheus.NewDesc("wsbridge_backend_state", "1 for the backend link's current state.", []string{"state"}, nil)
)

func (statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range statMetrics {
		ch <- m.desc
	}
	ch <- pendingDesc
	ch <- stateDesc
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.counters.snapshot(c.s.bridge)
	for _, m := range statMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, m.value(st))
	}
	ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(c.s.bridge.Stats().Pending))
	for _, state := range []bridge.State{bridge.StateDisconnected, bridge.StateBackoff, bridge.StateConnecting, bridge.StateConnected} {
		v := 0.0
		if stateToProto[state] == st.GetBackendState() {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, v, state.String())
	}
}
