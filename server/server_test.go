package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsbridge/wsbridge/backend"
	"github.com/wsbridge/wsbridge/backend/backendtest"
	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// demoBackend runs the demo backend on loopback for the test.
func demoBackend(t *testing.T) string {
	t.Helper()
	return demoBackendWith(t, 0)
}

// demoBackendWith runs the demo backend with ticks every tick (0: none).
func demoBackendWith(t *testing.T, tick time.Duration) string {
	t.Helper()
	url, _ := backendtest.Start(t, backend.Options{Tick: tick})
	return url
}

type harness struct {
	srv    *Server
	conn   *grpc.ClientConn
	bridge wsbridgev1.BridgeServiceClient
	stats  wsbridgev1.StatsServiceClient
	base   string // http://host:port
	stop   func() error
}

func start(t *testing.T, backendURL string, mutate func(*Options)) *harness {
	t.Helper()
	// A short ConnDrain: tests' idle keep-alive connections would otherwise
	// hold every shutdown for the default second.
	opts := Options{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Bridge: bridge.Options{URL: backendURL}, ConnDrain: 50 * time.Millisecond}
	if mutate != nil {
		mutate(&opts)
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run(ctx) }()
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			stopErr = <-runErr
			conn.Close()
			http.DefaultClient.CloseIdleConnections()
		})
		return stopErr
	}
	t.Cleanup(func() { _ = stop() })
	return &harness{
		srv: srv, conn: conn, stop: stop,
		bridge: wsbridgev1.NewBridgeServiceClient(conn),
		stats:  wsbridgev1.NewStatsServiceClient(conn),
		base:   "http://" + srv.HTTPAddr().String(),
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func value(t *testing.T, js string) *structpb.Value {
	t.Helper()
	var v structpb.Value
	if err := v.UnmarshalJSON([]byte(js)); err != nil {
		t.Fatal(err)
	}
	return &v
}

// jsonOf is m as compact JSON with sorted keys.
func jsonOf(t *testing.T, m proto.Message) string {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var x any
	_ = json.Unmarshal(b, &x)
	c, _ := json.Marshal(x)
	return string(c)
}

// post sends a REST request and returns the status and the decoded body.
func post(t *testing.T, url, body string, header http.Header) (int, map[string]any) {
	t.Helper()
	code, raw := httpDo(t, http.MethodPost, url, body, header)
	var out map[string]any
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		t.Fatalf("%s: body %q is not JSON: %v", url, raw, err)
	}
	return code, out
}

func TestGRPCCallAndNotify(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	res, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Params: value(t, `{"a":[1,"two",null,true]}`)})
	if err != nil {
		t.Fatal(err)
	}
	if got := jsonOf(t, res.Result); got != `{"a":[1,"two",null,true]}` {
		t.Fatalf("echo result %s", got)
	}
	res, err = h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "add", Params: value(t, `[2,3]`)})
	if err != nil || res.Result.GetNumberValue() != 5 {
		t.Fatalf("add: %v %v", res, err)
	}
	// Params absent: nothing is sent, so echo returns null.
	res, err = h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
	if _, isNull := res.GetResult().GetKind().(*structpb.Value_NullValue); err != nil || !isNull {
		t.Fatalf("echo without params: %v %v", res, err)
	}
	if _, err := h.bridge.Notify(ctxT(t), &wsbridgev1.NotifyRequest{Method: "echo", Params: value(t, `[1]`)}); err != nil {
		t.Fatal(err)
	}
	res, err = h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "counter"})
	if err != nil || res.Result.GetNumberValue() != 5 {
		t.Fatalf("counter after 3 calls and a notification: %v %v", res, err)
	}
	bridgetest.Eventually(t, "5 messages out", func() bool { return h.srv.Bridge().Stats().MessagesOut == 5 })
	st, err := h.stats.GetStats(ctxT(t), &wsbridgev1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.RequestsHandled != 5 || st.GrpcCalls != 5 || st.HttpProxied != 0 || st.BackendConnects != 1 ||
		!st.BackendConnected || st.BackendState != wsbridgev1.BackendState_BACKEND_STATE_CONNECTED ||
		st.MessagesProxied != 9 || st.Latency.GetCount() != 4 || st.ActiveClients < 1 {
		t.Fatalf("stats %v", st)
	}
}

func TestInvalidRequests(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	for _, req := range []*wsbridgev1.CallRequest{
		{Method: ""},
		{Method: "echo", Params: value(t, `42`)},
		{Method: "echo", Params: value(t, `"s"`)},
		{Method: "echo", Timeout: durationpb.New(-time.Second)},
	} {
		_, err := h.bridge.Call(ctxT(t), req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want INVALID_ARGUMENT", req, err)
		}
	}
	code, body := post(t, h.base+"/v1/call", `{"method":"echo","params":7}`, nil)
	if code != 400 {
		t.Fatalf("REST scalar params: %d %v", code, body)
	}
	code, body = post(t, h.base+"/v1/call", `{"method":`, nil)
	if code != 400 {
		t.Fatalf("REST truncated JSON: %d %v", code, body)
	}
}

func TestBackendErrorsOverGRPCAndREST(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	for _, tc := range []struct {
		code     int
		grpcCode codes.Code
		http     int
	}{
		{-32601, codes.Unimplemented, 501},
		{-32602, codes.InvalidArgument, 400},
		{-32600, codes.InvalidArgument, 400},
		{-32603, codes.Internal, 500},
		{-32000, codes.Unknown, 500},
	} {
		params := fmt.Sprintf(`{"code":%d,"message":"boom %d","data":{"why":"test"}}`, tc.code, tc.code)
		_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "fail", Params: value(t, params)})
		st := status.Convert(err)
		if st.Code() != tc.grpcCode || st.Message() != fmt.Sprintf("boom %d", tc.code) {
			t.Errorf("gRPC %d: %v", tc.code, st)
		}
		var be *wsbridgev1.BackendError
		for _, d := range st.Details() {
			if x, ok := d.(*wsbridgev1.BackendError); ok {
				be = x
			}
		}
		if be == nil || be.Code != int64(tc.code) || be.Data.GetStructValue().GetFields()["why"].GetStringValue() != "test" {
			t.Errorf("gRPC %d: detail %v", tc.code, be)
		}

		status, body := post(t, h.base+"/v1/call/fail", params, nil)
		if status != tc.http {
			t.Errorf("REST %d: HTTP %d %v, want %d", tc.code, status, body, tc.http)
		}
		details, _ := body["details"].([]any)
		if len(details) == 0 || !strings.Contains(fmt.Sprint(details[0]), fmt.Sprint(tc.code)) {
			t.Errorf("REST %d: details %v", tc.code, body["details"])
		}
	}
	st, _ := h.stats.GetStats(ctxT(t), &wsbridgev1.GetStatsRequest{})
	if st.Errors != 10 || st.BackendErrors != 10 {
		t.Fatalf("errors %d backend errors %d, want 10 and 10", st.Errors, st.BackendErrors)
	}
}

func TestREST(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	code, body := post(t, h.base+"/v1/call", `{"method":"echo","params":{"k":"v"},"timeout":"5s"}`, nil)
	if code != 200 || fmt.Sprint(body["result"]) != "map[k:v]" {
		t.Fatalf("POST /v1/call: %d %v", code, body)
	}
	code, body = post(t, h.base+"/v1/call/add", `[40,2]`, nil)
	if code != 200 || body["result"] != 42.0 {
		t.Fatalf("POST /v1/call/add: %d %v", code, body)
	}
	code, body = post(t, h.base+"/v1/notify", `{"method":"echo","params":[1]}`, nil)
	if code != 200 || len(body) != 0 {
		t.Fatalf("POST /v1/notify: %d %v", code, body)
	}
	resp, err := http.Get(h.base + "/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st["httpProxied"] != "3" || st["backendState"] != "BACKEND_STATE_CONNECTED" {
		t.Fatalf("GET /v1/stats: %v", st)
	}
}

// GET /__stats has every field of the seed with the seed's JSON types.
func TestSeedStats(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	post(t, h.base+"/v1/call/echo", `[1]`, nil)
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(h.base + "/__stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
	var got map[string]any
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	seed := map[string]string{
		"isolateId": "string", "startedAt": "number", "uptimeMs": "number", "requestsHandled": "number",
		"wsUpgrades": "number", "httpProxied": "number", "messagesProxied": "number", "backendConnects": "number",
		"backendReconnects": "number", "errors": "number", "backendConnected": "bool", "activeClients": "number",
		"requestsPerSecond": "number",
	}
	for k, typ := range seed {
		v, ok := got[k]
		if !ok {
			t.Errorf("missing %s", k)
			continue
		}
		var gotType string
		switch v.(type) {
		case string:
			gotType = "string"
		case json.Number:
			gotType = "number"
		case bool:
			gotType = "bool"
		}
		if gotType != typ {
			t.Errorf("%s is %T, want a JSON %s", k, v, typ)
		}
	}
	if got["requestsHandled"] != json.Number("2") || got["httpProxied"] != json.Number("1") || got["backendConnected"] != true {
		t.Fatalf("values %v", got)
	}
	started, _ := got["startedAt"].(json.Number).Int64()
	if d := time.Since(time.UnixMilli(started)); d < 0 || d > time.Minute {
		t.Fatalf("startedAt %d is not ms since the epoch of now", started)
	}
}

func TestDeadlines(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.Bridge.CallTimeout = 30 * time.Second })
	sleep := value(t, `{"ms":10000}`)

	ctx, cancel := context.WithTimeout(ctxT(t), 100*time.Millisecond)
	defer cancel()
	_, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "sleep", Params: sleep})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("gRPC deadline: %v", err)
	}
	_, err = h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: sleep, Timeout: durationpb.New(100 * time.Millisecond)})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("timeout field: %v", err)
	}
	code, body := post(t, h.base+"/v1/call/sleep", `{"ms":10000}`, http.Header{"Grpc-Timeout": {"100m"}})
	if code != 504 {
		t.Fatalf("REST Grpc-Timeout: %d %v", code, body)
	}
	code, body = post(t, h.base+"/v1/call", `{"method":"sleep","params":{"ms":10000},"timeout":"0.1s"}`, nil)
	if code != 504 {
		t.Fatalf("REST timeout field: %d %v", code, body)
	}
	code, body = post(t, h.base+"/v1/call/echo", `[1]`, http.Header{"Grpc-Timeout": {"abc"}})
	if code != 400 {
		t.Fatalf("bad Grpc-Timeout: %d %v", code, body)
	}
	st, _ := h.stats.GetStats(ctxT(t), &wsbridgev1.GetStatsRequest{})
	if st.Timeouts != 4 || st.InFlight != 0 {
		t.Fatalf("timeouts %d in flight %d, want 4 and 0", st.Timeouts, st.InFlight)
	}

	h2 := start(t, demoBackend(t), func(o *Options) { o.Bridge.CallTimeout = 100 * time.Millisecond })
	_, err = h2.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: sleep, Timeout: durationpb.New(time.Minute)})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("--call-timeout: %v", err)
	}
}

func TestCancelledGRPCCallLeavesNothingPending(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	ctx, cancel := context.WithCancel(ctxT(t))
	errc := make(chan error, 1)
	go func() {
		_, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "sleep", Params: value(t, `[10000]`)})
		errc <- err
	}()
	bridgetest.Eventually(t, "the call in flight", func() bool { return h.srv.Bridge().Stats().Pending == 1 })
	cancel()
	if status.Code(<-errc) != codes.Canceled {
		t.Fatal("not cancelled")
	}
	bridgetest.Eventually(t, "the pending entry to go", func() bool {
		st := h.srv.Bridge().Stats()
		return st.Pending == 0 && st.InFlight == 0
	})
}

func TestWaitForReady(t *testing.T) {
	fb := bridgetest.NewServer(t, nil)
	fb.Stop()
	h := start(t, fb.URL(), func(o *Options) {
		o.Bridge.Backoff = bridge.Backoff{Base: 20 * time.Millisecond, Max: 50 * time.Millisecond}
	})
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("backend down: %v", err)
	}
	byField := make(chan error, 1)
	go func() {
		_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", WaitForReady: true})
		byField <- err
	}()
	byMetadata := make(chan error, 1)
	go func() {
		ctx := metadata.AppendToOutgoingContext(ctxT(t), WaitForReadyMetadata, "true")
		_, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "echo"})
		byMetadata <- err
	}()
	byHeader := make(chan int, 1)
	go func() {
		code, _ := post(t, h.base+"/v1/call/echo", `[1]`, http.Header{"Wsbridge-Wait-For-Ready": {"true"}})
		byHeader <- code
	}()
	bridgetest.Eventually(t, "three waiting calls and more failed dials", func() bool {
		st := h.srv.Bridge().Stats()
		return st.InFlight == 3 && st.DialFailures >= 3
	})
	if err := fb.Start(); err != nil {
		t.Fatal(err)
	}
	if err := <-byField; err != nil {
		t.Fatalf("wait_for_ready field: %v", err)
	}
	if err := <-byMetadata; err != nil {
		t.Fatalf("wait-for-ready metadata: %v", err)
	}
	if code := <-byHeader; code != 200 {
		t.Fatalf("wait-for-ready header: HTTP %d", code)
	}
}

func TestRESTBodyLimit(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.Bridge.MaxMessageBytes = 1024 })
	big := `{"method":"echo","params":["` + strings.Repeat("x", 2000) + `"]}`
	code, body := post(t, h.base+"/v1/call", big, nil)
	if code != http.StatusRequestEntityTooLarge {
		t.Fatalf("with Content-Length: %d %v", code, body)
	}
	// Chunked: no Content-Length, the limit trips while decoding.
	req, _ := http.NewRequest(http.MethodPost, h.base+"/v1/call", io.MultiReader(strings.NewReader(big)))
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked: %d", resp.StatusCode)
	}
	if st := h.srv.Bridge().Stats(); st.MessagesOut != 0 {
		t.Fatal("an oversize body reached the backend")
	}
	// gRPC over the limit: RESOURCE_EXHAUSTED before anything is sent.
	_, err = h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Params: value(t, `["`+strings.Repeat("x", 2000)+`"]`)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("gRPC oversize: %v", err)
	}
}

func TestInFlightLimit(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.Bridge.MaxInFlight = 1 })
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "sleep", Params: value(t, `[10000]`)})
	}()
	bridgetest.Eventually(t, "one call in flight", func() bool { return h.srv.Bridge().Stats().InFlight == 1 })
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("over the limit: %v", err)
	}
	code, _ := post(t, h.base+"/v1/call/echo", `[1]`, nil)
	if code != 429 {
		t.Fatalf("REST over the limit: %d", code)
	}
	cancel()
	<-done
}

func TestHealthAndGracefulShutdown(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.ShutdownGrace = 5 * time.Second })
	hc := healthpb.NewHealthClient(h.conn)
	resp, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: "wsbridge.v1.BridgeService"})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", resp, err)
	}
	watch, err := hc.Watch(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if first, err := watch.Recv(); err != nil || first.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch: %v %v", first, err)
	}

	// A call in flight at shutdown drains and succeeds.
	inflight := make(chan error, 1)
	go func() {
		_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: value(t, `[300]`)})
		inflight <- err
	}()
	bridgetest.Eventually(t, "the call in flight", func() bool { return h.srv.Bridge().Stats().Pending == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()

	next, err := watch.Recv()
	if err != nil || next.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health during shutdown: %v %v", next, err)
	}
	// New calls are served until the client has the GOAWAY, then refused
	// with UNAVAILABLE (by the closed listener, or by the gateway): never
	// anything else, and never a hang.
	for {
		_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
		if status.Code(err) == codes.Unavailable {
			break
		}
		if err != nil {
			t.Fatalf("call during shutdown: %v", err)
		}
	}
	if err := <-inflight; err != nil {
		t.Fatalf("the call in flight at shutdown: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestShutdownGraceIsBounded(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.ShutdownGrace = 200 * time.Millisecond })
	inflight := make(chan error, 1)
	go func() {
		_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: value(t, `[60000]`)})
		inflight <- err
	}()
	bridgetest.Eventually(t, "the call in flight", func() bool { return h.srv.Bridge().Stats().Pending == 1 })
	start := time.Now()
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	err := <-inflight
	if c := status.Code(err); c != codes.Unavailable && c != codes.Canceled {
		t.Fatalf("call cut by the grace period: %v", err)
	}
	// The grace plus the bounded close handshake, with room for a slow machine.
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("shutdown took %v with a 200ms grace", el)
	}
}

func TestUnreachableBackend(t *testing.T) {
	fb := bridgetest.NewServer(t, nil)
	fb.Stop()
	h := start(t, fb.URL(), nil)
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("unreachable backend: %v", err)
	}
	st, err := h.stats.GetStats(ctxT(t), &wsbridgev1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.BackendConnected || st.DialFailures != 1 || st.BackendState != wsbridgev1.BackendState_BACKEND_STATE_BACKOFF {
		t.Fatalf("stats %v", st)
	}
}
