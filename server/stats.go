package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/statsdecl"
	"github.com/wsbridge/wsbridge/internal/window"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// face names where a client request came in: the door, as the metrics'
// face label and the access log name it (faceNames).
type face int

const (
	faceGRPC    face = iota // wsbridge.v1 over gRPC
	faceSession             // the gRPC Session stream: JSON-RPC over gRPC
	faceREST                // wsbridge.v1 over REST (grpc-gateway)
	faceRPC                 // JSON-RPC over HTTP
	faceWS                  // JSON-RPC over WebSocket
	// The user's own services (--descriptor-set), by the protocol that
	// carried them: gRPC, or REST, Connect and gRPC-Web (transcoded by
	// vanguard).
	faceTyped
	faceRESTTyped
	faceConnect
	faceGRPCWeb
)

var faceNames = map[face]string{
	faceGRPC: "grpc", faceSession: "session", faceREST: "rest", faceRPC: "rpc", faceWS: "ws",
	faceTyped: "grpc-typed", faceRESTTyped: "rest-typed", faceConnect: "connect", faceGRPCWeb: "grpc-web",
}

type faceKey struct{}

func withFace(ctx context.Context, f face) context.Context {
	return context.WithValue(ctx, faceKey{}, f)
}

func faceOf(ctx context.Context) face {
	f, _ := ctx.Value(faceKey{}).(face)
	return f
}

// counters are the gateway's own totals; the Bridge keeps the backend's.
// What each means is declared once, in stats.proto (see package
// statsdecl); snapshot fills the Stats message from them.
type counters struct {
	instanceID string
	startedAt  time.Time
	recent     *window.Rate

	requests, grpcCalls, httpProxied, wsUpgrades atomic.Uint64
	errors, backendErrors, slowConsumers         atomic.Uint64
	unauthenticated, refusedClients              atomic.Uint64
	clientLimited, revoked, hostRefused          atomic.Uint64
	// errorsByReason has a counter for every errorReason, made at start.
	errorsByReason map[string]*atomic.Uint64
	// byClass counts backend error replies by rpcClasses' index.
	byClass                          [len(rpcClasses)]atomic.Uint64
	metrics                          *metrics // nil: no histograms
	activeGRPC, activeHTTP, activeWS atomic.Int64
}

func newCounters() *counters {
	var id [4]byte
	_, _ = rand.Read(id[:])
	c := &counters{
		instanceID:     hex.EncodeToString(id[:]),
		startedAt:      time.Now(),
		recent:         window.NewRate(10, nil),
		errorsByReason: map[string]*atomic.Uint64{},
	}
	for _, r := range errorReasons() {
		c.errorsByReason[r] = new(atomic.Uint64)
	}
	return c
}

// request counts one client request arriving on f, and returns when.
func (c *counters) request(f face) time.Time {
	c.requests.Add(1)
	c.recent.Add()
	switch f {
	case faceGRPC, faceSession, faceTyped:
		c.grpcCalls.Add(1)
	case faceREST, faceRPC, faceRESTTyped, faceConnect, faceGRPCWeb:
		c.httpProxied.Add(1)
	}
	return time.Now()
}

// finished counts the outcome of one client request made on f at start.
func (c *counters) finished(f face, method string, start time.Time, err error) {
	if c.metrics != nil {
		c.metrics.observe(f, method, time.Since(start), err)
	}
	if err != nil {
		c.failed(err)
	}
}

// failed counts a failure: of a request, or of a stream after it began.
func (c *counters) failed(err error) {
	c.errors.Add(1)
	c.errorsByReason[errorReason(err)].Add(1)
	var be *bridge.Error
	if errors.As(err, &be) && be.Code == bridge.CodeBackendError {
		c.backendErrors.Add(1)
		if be.RPC != nil {
			c.byClass[rpcClass(be.RPC.Code)].Add(1)
		}
	}
}

// rpcClasses name the classes of JSON-RPC error codes (see rpcClass).
var rpcClasses = [...]string{"parse_error", "invalid_request", "method_not_found", "invalid_params", "internal_error", "server_error", "application"}

// rpcClass is the index in rpcClasses of a JSON-RPC error code's class:
// the five codes the specification names, its range for server errors,
// and the rest, defined by the application.
func rpcClass(code int64) int {
	switch {
	case code == -32700:
		return 0
	case code >= -32603 && code <= -32600:
		return int(-32600 - code + 1)
	case code >= -32099 && code <= -32000:
		return 5
	}
	return 6
}

func (c *counters) backendErrorsByClass() map[string]uint64 {
	out := make(map[string]uint64, len(rpcClasses))
	for i, name := range rpcClasses {
		out[name] = c.byClass[i].Load()
	}
	return out
}

// errorReason names the kind of a failure for the stats: the bridge code's
// name, "invalid_request" for a request no server could serve, "internal"
// for anything else.
func errorReason(err error) string {
	var je *jsonrpc.Error
	if errors.As(err, &je) {
		return "invalid_request"
	}
	if code := bridge.CodeOf(err); code != 0 {
		return code.String()
	}
	return "internal"
}

// errorReasons lists every value errorReason can take, so that the stats
// show each one (0 until it happens).
func errorReasons() []string {
	var out []string
	for _, c := range bridge.Codes() {
		out = append(out, c.String())
	}
	return append(out, "invalid_request", "internal")
}

var connectivityToProto = map[bridge.Connectivity]wsbridgev1.BackendConnectivity{
	bridge.ConnIdle:             wsbridgev1.BackendConnectivity_BACKEND_CONNECTIVITY_IDLE,
	bridge.ConnConnecting:       wsbridgev1.BackendConnectivity_BACKEND_CONNECTIVITY_CONNECTING,
	bridge.ConnReady:            wsbridgev1.BackendConnectivity_BACKEND_CONNECTIVITY_READY,
	bridge.ConnTransientFailure: wsbridgev1.BackendConnectivity_BACKEND_CONNECTIVITY_TRANSIENT_FAILURE,
	bridge.ConnShutdown:         wsbridgev1.BackendConnectivity_BACKEND_CONNECTIVITY_SHUTDOWN,
}

var unavailableToProto = map[string]wsbridgev1.BackendUnavailable{
	bridge.UnavailableFailing:  wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_FAILING,
	bridge.UnavailableBreaker:  wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_BREAKER_OPEN,
	bridge.UnavailableHealth:   wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_HEALTH,
	bridge.UnavailableLag:      wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_LAG,
	bridge.UnavailableEjected:  wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_EJECTED,
	bridge.UnavailableShutdown: wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_SHUTDOWN,
}

var stateToProto = map[bridge.State]wsbridgev1.BackendState{
	bridge.StateDisconnected: wsbridgev1.BackendState_BACKEND_STATE_DISCONNECTED,
	bridge.StateConnecting:   wsbridgev1.BackendState_BACKEND_STATE_CONNECTING,
	bridge.StateConnected:    wsbridgev1.BackendState_BACKEND_STATE_CONNECTED,
	bridge.StateBackoff:      wsbridgev1.BackendState_BACKEND_STATE_BACKOFF,
}

// snapshot returns the gateway's stats: each field of the declaration
// (stats.proto), filled from the gateway's counters and the Bridge's.
func (s *Server) snapshot() *wsbridgev1.Stats {
	c, bs := s.counters, s.bridge.Stats()
	uptime := time.Since(c.startedAt)
	requests := c.requests.Load()
	rps := 0.0
	if sec := uptime.Seconds(); sec > 0 {
		rps = float64(requests) / sec
	}
	byReason := make(map[string]uint64, len(c.errorsByReason))
	for r, n := range c.errorsByReason {
		byReason[r] = n.Load()
	}
	st := &wsbridgev1.Stats{
		InstanceId:              c.instanceID,
		StartedAt:               timestamppb.New(c.startedAt),
		UptimeMs:                uint64(uptime.Milliseconds()),
		RequestsHandled:         requests,
		WsUpgrades:              c.wsUpgrades.Load(),
		HttpProxied:             c.httpProxied.Load(),
		GrpcCalls:               c.grpcCalls.Load(),
		MessagesProxied:         bs.MessagesOut + bs.MessagesIn,
		BackendConnects:         bs.Connects,
		BackendReconnects:       bs.Reconnects,
		Errors:                  c.errors.Load(),
		BackendConnected:        bs.State == bridge.StateConnected,
		ActiveClients:           c.activeGRPC.Load() + c.activeHTTP.Load() + c.activeWS.Load(),
		RequestsPerSecond:       rps,
		RecentRequestsPerSecond: c.recent.PerSecond(),
		InFlight:                bs.InFlight,
		Timeouts:                bs.Timeouts,
		LateResponses:           bs.Late,
		BackendState:            stateToProto[bs.State],
		BackendUrl:              bs.URL,
		Latency:                 latencyProto(bs.Latency),
		UnknownResponses:        bs.Unknown,
		BackendNotifications:    bs.Notifications,
		MalformedFrames:         bs.Malformed,
		DialFailures:            bs.DialFailures,
		BackendErrors:           c.backendErrors.Load(),
		BackendConnsOpen:        uint32(bs.ConnsOpen),
		Rejected:                bs.Rejected,
		WsClients:               c.activeWS.Load(),
		Subscriptions:           bs.Subscriptions,
		SlowConsumers:           c.slowConsumers.Load(),
		NotificationsDelivered:  bs.Delivered,
		Resubscribes:            bs.Resubscribes,
		Goroutines:              int64(runtime.NumGoroutine()),
		Unauthenticated:         c.unauthenticated.Load(),
		GrpcClients:             c.activeGRPC.Load(),
		HttpClients:             c.activeHTTP.Load(),
		ErrorsByReason:          byReason,
		LastDialError:           bs.LastDialError,
		FailureLatency:          latencyProto(bs.FailureLatency),
		NotificationsDropped:    bs.Dropped,
		ClientSubscriptions:     bs.ClientSubscriptions,
		BackendRequests:         bs.BackendRequests,
		OversizeReplies:         bs.OversizeReplies,
		Ready:                   bs.Ready && !s.draining.Load(),
		RefusedClients:          c.refusedClients.Load(),
		Pending:                 bs.Pending,
		ClientLimited:           c.clientLimited.Load(),
		Revoked:                 c.revoked.Load(),
		HostRefused:             c.hostRefused.Load(),
		BackendFramesSent:       bs.FramesOut,
		Retries:                 bs.Retries,
		Hedges:                  bs.Hedges,
		Coalesced:               bs.Coalesced,
		CacheHits:               bs.CacheHits,
		BackendMessages:         map[string]uint64{"sent": bs.MessagesOut, "received": bs.MessagesIn},
		BackendErrorsByClass:    c.backendErrorsByClass(),
	}
	for _, be := range bs.Backends {
		row := &wsbridgev1.BackendStats{
			Url: be.URL, State: stateToProto[be.State], Available: be.Available, Breaker: be.Breaker.String(),
			HealthError: be.HealthError, Waiting: be.Waiting, Connects: be.Connects, Reconnects: be.Reconnects,
			DialFailures: be.DialFailures, IdleCloses: be.IdleCloses, FramesSent: be.FramesOut, RequestsSent: be.RequestsOut,
			TransportErrors: be.TransportErrors, BreakerOpens: be.BreakerOpens, Latency: latencyProto(be.Latency),
			Connectivity: connectivityToProto[be.Connectivity], Unavailable: unavailableToProto[be.Unavailable],
			LastDialError: be.LastDialError, Head: be.Head, Ejections: be.Ejections,
		}
		if !be.LastDialErrorAt.IsZero() {
			row.LastDialErrorAt = timestamppb.New(be.LastDialErrorAt)
		}
		st.Backends = append(st.Backends, row)
	}
	if !bs.LastDialErrorAt.IsZero() {
		st.LastDialErrorAt = timestamppb.New(bs.LastDialErrorAt)
	}
	return st
}

func latencyProto(l window.Summary) *wsbridgev1.Latency {
	return &wsbridgev1.Latency{P50Ms: l.P50, P90Ms: l.P90, P99Ms: l.P99, Count: uint64(l.Count), WindowSeconds: uint32(l.Window / time.Second)}
}

func (s *Server) serveSeedStats(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(statsdecl.Seed(s.snapshot()))
}
