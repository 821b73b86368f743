package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/window"
)

// face names where a client request came in.
type face int

const (
	faceGRPC face = iota
	faceREST
	faceRPC // JSON-RPC over HTTP
	faceWS  // JSON-RPC over WebSocket
)

type faceKey struct{}

func withFace(ctx context.Context, f face) context.Context {
	return context.WithValue(ctx, faceKey{}, f)
}

func faceOf(ctx context.Context) face {
	f, _ := ctx.Value(faceKey{}).(face)
	return f
}

// counters are the gateway's own totals; the Bridge keeps the backend's.
type counters struct {
	instanceID string
	startedAt  time.Time
	recent     *window.Rate

	requests, grpcCalls, httpProxied, wsUpgrades atomic.Uint64
	errors, backendErrors, slowConsumers         atomic.Uint64
	unauthenticated, refusedClients              atomic.Uint64
	metrics                                      *metrics // nil: no histograms
	activeGRPC, activeHTTP, activeWS             atomic.Int64
}

func newCounters() *counters {
	var id [4]byte
	_, _ = rand.Read(id[:])
	return &counters{
		instanceID: hex.EncodeToString(id[:]),
		startedAt:  time.Now(),
		recent:     window.NewRate(10, nil),
	}
}

// request counts one client request arriving on f, and returns when.
func (c *counters) request(f face) time.Time {
	c.requests.Add(1)
	c.recent.Add()
	switch f {
	case faceGRPC:
		c.grpcCalls.Add(1)
	case faceREST, faceRPC:
		c.httpProxied.Add(1)
	}
	return time.Now()
}

// finished counts the outcome of one client request made on f at start.
func (c *counters) finished(f face, method string, start time.Time, err error) {
	if c.metrics != nil {
		c.metrics.observe(f, method, time.Since(start), err)
	}
	if err == nil {
		return
	}
	c.errors.Add(1)
	if bridge.CodeOf(err) == bridge.CodeBackendError {
		c.backendErrors.Add(1)
	}
}

var stateToProto = map[bridge.State]wsbridgev1.BackendState{
	bridge.StateDisconnected: wsbridgev1.BackendState_BACKEND_STATE_DISCONNECTED,
	bridge.StateConnecting:   wsbridgev1.BackendState_BACKEND_STATE_CONNECTING,
	bridge.StateConnected:    wsbridgev1.BackendState_BACKEND_STATE_CONNECTED,
	bridge.StateBackoff:      wsbridgev1.BackendState_BACKEND_STATE_BACKOFF,
}

// snapshot returns the gateway's stats.
func (c *counters) snapshot(b *bridge.Bridge) *wsbridgev1.Stats {
	bs := b.Stats()
	uptime := time.Since(c.startedAt)
	requests := c.requests.Load()
	rps := 0.0
	if s := uptime.Seconds(); s > 0 {
		rps = float64(requests) / s
	}
	return &wsbridgev1.Stats{
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
		Latency: &wsbridgev1.Latency{
			P50Ms:         bs.Latency.P50,
			P90Ms:         bs.Latency.P90,
			P99Ms:         bs.Latency.P99,
			Count:         uint64(bs.Latency.Count),
			WindowSeconds: uint32(bs.Latency.Window / time.Second),
		},
		UnknownResponses:       bs.Unknown,
		BackendNotifications:   bs.Notifications,
		MalformedFrames:        bs.Malformed,
		DialFailures:           bs.DialFailures,
		BackendErrors:          c.backendErrors.Load(),
		BackendConnsOpen:       uint32(bs.ConnsOpen),
		Rejected:               bs.Rejected,
		WsClients:              c.activeWS.Load(),
		Subscriptions:          bs.Subscriptions,
		SlowConsumers:          c.slowConsumers.Load(),
		NotificationsDelivered: bs.Delivered,
		Resubscribes:           bs.Resubscribes,
		Goroutines:             int64(runtime.NumGoroutine()),
		GrpcClients:            c.activeGRPC.Load(),
		HttpClients:            c.activeHTTP.Load(),
		Unauthenticated:        c.unauthenticated.Load(),
	}
}

// seedStats is GET /__stats: the original proxy's fields, in its JSON shape
// (plain numbers and booleans), followed by wsbridge's extra fields.
type seedStats struct {
	IsolateID         string  `json:"isolateId"`
	StartedAt         int64   `json:"startedAt"`
	UptimeMs          uint64  `json:"uptimeMs"`
	RequestsHandled   uint64  `json:"requestsHandled"`
	WsUpgrades        uint64  `json:"wsUpgrades"`
	HTTPProxied       uint64  `json:"httpProxied"`
	MessagesProxied   uint64  `json:"messagesProxied"`
	BackendConnects   uint64  `json:"backendConnects"`
	BackendReconnects uint64  `json:"backendReconnects"`
	Errors            uint64  `json:"errors"`
	BackendConnected  bool    `json:"backendConnected"`
	ActiveClients     int64   `json:"activeClients"`
	RequestsPerSecond float64 `json:"requestsPerSecond"`

	GRPCCalls               uint64      `json:"grpcCalls"`
	RecentRequestsPerSecond float64     `json:"recentRequestsPerSecond"`
	InFlight                int64       `json:"inFlight"`
	Timeouts                uint64      `json:"timeouts"`
	LateResponses           uint64      `json:"lateResponses"`
	UnknownResponses        uint64      `json:"unknownResponses"`
	BackendNotifications    uint64      `json:"backendNotifications"`
	MalformedFrames         uint64      `json:"malformedFrames"`
	DialFailures            uint64      `json:"dialFailures"`
	BackendErrors           uint64      `json:"backendErrors"`
	Rejected                uint64      `json:"rejected"`
	BackendState            string      `json:"backendState"`
	BackendURL              string      `json:"backendUrl"`
	BackendConnsOpen        uint32      `json:"backendConnsOpen"`
	WSClients               int64       `json:"wsClients"`
	Subscriptions           int64       `json:"subscriptions"`
	SlowConsumers           uint64      `json:"slowConsumers"`
	NotificationsDelivered  uint64      `json:"notificationsDelivered"`
	Resubscribes            uint64      `json:"resubscribes"`
	Goroutines              int64       `json:"goroutines"`
	Unauthenticated         uint64      `json:"unauthenticated"`
	Latency                 seedLatency `json:"latency"`
}

type seedLatency struct {
	P50Ms         float64 `json:"p50Ms"`
	P90Ms         float64 `json:"p90Ms"`
	P99Ms         float64 `json:"p99Ms"`
	Count         uint64  `json:"count"`
	WindowSeconds uint32  `json:"windowSeconds"`
}

func toSeed(s *wsbridgev1.Stats) seedStats {
	return seedStats{
		IsolateID:               s.InstanceId,
		StartedAt:               s.StartedAt.AsTime().UnixMilli(),
		UptimeMs:                s.UptimeMs,
		RequestsHandled:         s.RequestsHandled,
		WsUpgrades:              s.WsUpgrades,
		HTTPProxied:             s.HttpProxied,
		MessagesProxied:         s.MessagesProxied,
		BackendConnects:         s.BackendConnects,
		BackendReconnects:       s.BackendReconnects,
		Errors:                  s.Errors,
		BackendConnected:        s.BackendConnected,
		ActiveClients:           s.ActiveClients,
		RequestsPerSecond:       s.RequestsPerSecond,
		GRPCCalls:               s.GrpcCalls,
		RecentRequestsPerSecond: s.RecentRequestsPerSecond,
		InFlight:                s.InFlight,
		Timeouts:                s.Timeouts,
		LateResponses:           s.LateResponses,
		UnknownResponses:        s.UnknownResponses,
		BackendNotifications:    s.BackendNotifications,
		MalformedFrames:         s.MalformedFrames,
		DialFailures:            s.DialFailures,
		BackendErrors:           s.BackendErrors,
		Rejected:                s.Rejected,
		BackendState:            stateName(s.BackendState),
		BackendURL:              s.BackendUrl,
		BackendConnsOpen:        s.BackendConnsOpen,
		WSClients:               s.WsClients,
		Subscriptions:           s.Subscriptions,
		SlowConsumers:           s.SlowConsumers,
		NotificationsDelivered:  s.NotificationsDelivered,
		Resubscribes:            s.Resubscribes,
		Goroutines:              s.Goroutines,
		Unauthenticated:         s.Unauthenticated,
		Latency: seedLatency{
			P50Ms: s.Latency.GetP50Ms(), P90Ms: s.Latency.GetP90Ms(), P99Ms: s.Latency.GetP99Ms(),
			Count: s.Latency.GetCount(), WindowSeconds: s.Latency.GetWindowSeconds(),
		},
	}
}

func stateName(s wsbridgev1.BackendState) string {
	for bs, ps := range stateToProto {
		if ps == s {
			return bs.String()
		}
	}
	return "unknown"
}

func (s *Server) serveSeedStats(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := json.MarshalIndent(toSeed(s.counters.snapshot(s.bridge)), "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(body, '\n'))
}
