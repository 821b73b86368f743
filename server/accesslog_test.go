package server

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// syncBuffer is a buffer the log handler and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		var m map[string]any
		if line != "" && json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "call" {
			out = append(out, m)
		}
	}
	return out
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The access log: a line per finished call on every face, with the
// backend and the client's address, failures always and successes by the
// sample; the token in the headers never appears.
func TestAccessLog(t *testing.T) {
	tf := tokenAuth(t, "t0ps3cret")
	var buf syncBuffer
	backend := demoBackend(t)
	h := start(t, backend, func(o *Options) {
		o.Auth = tf
		o.AccessLog = slog.New(slog.NewJSONHandler(&buf, nil))
	})
	ctx := withToken(ctxT(t), "t0ps3cret")
	if _, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "add", Params: value(t, `[1,2]`)}); err != nil {
		t.Fatal(err)
	}
	header := http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer t0ps3cret"}}
	httpDo(t, http.MethodPost, h.base+"/v1/call/echo", `["rest"]`, header)
	httpDo(t, http.MethodPost, h.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":-32602,"message":"m"}}`, header)
	conn, _, err := websocket.Dial(ctxT(t), strings.Replace(h.base, "http", "ws", 1)+"/ws",
		&websocket.DialOptions{Subprotocols: []string{"wsbridge", "bearer.t0ps3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	(&wsTestClient{t: t, conn: conn}).roundTrip(`{"jsonrpc":"2.0","id":1,"method":"counter"}`)

	bridgetest.Eventually(t, "four access lines", func() bool { return len(buf.lines(t)) == 4 })
	byFace := map[string]map[string]any{}
	for _, l := range buf.lines(t) {
		byFace[l["face"].(string)] = l
	}
	for face, want := range map[string]struct{ method, code string }{
		"grpc": {"add", "OK"}, "rest": {"echo", "OK"}, "rpc": {"fail", "InvalidArgument"}, "ws": {"counter", "OK"},
	} {
		l := byFace[face]
		if l == nil || l["method"] != want.method || l["code"] != want.code || l["backend"] != strings.TrimSuffix(backend, "/") ||
			!strings.HasPrefix(l["client"].(string), "127.0.0.1:") || l["latency_ms"] == nil || l["request_bytes"] == nil {
			t.Errorf("%s: %v", face, l)
		}
	}
	if strings.Contains(buf.String(), "t0ps3cret") {
		t.Error("the token is in the log")
	}
}

// Sampling keeps a share of the successful calls and every failed one.
func TestAccessLogSampling(t *testing.T) {
	var buf syncBuffer
	h := start(t, demoBackend(t), func(o *Options) {
		o.AccessLog = slog.New(slog.NewJSONHandler(&buf, nil))
		o.AccessLogSample = 1e-9
	})
	for range 20 {
		if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Params: value(t, `[1]`)}); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "fail", Params: value(t, `{"code":-32000,"message":"x"}`)})
	lines := buf.lines(t)
	if len(lines) != 1 || lines[0]["method"] != "fail" {
		t.Fatalf("lines %v", lines)
	}
}

// A failed call's line explains it (issue 21 item 4): the reason (is a
// retry safe?), the JSON-RPC code, the HTTP status where there is one;
// each door has its own face name (typed REST and Connect apart from
// typed gRPC), and a stream gets a line when it ends, with its duration
// and messages.
func TestAccessLogExplainsFailures(t *testing.T) {
	var buf syncBuffer
	h, _ := typedHarness(t, func(o *Options) { o.AccessLog = slog.New(slog.NewJSONHandler(&buf, nil)) })
	jsonHeader := http.Header{"Content-Type": {"application/json"}}
	httpDo(t, http.MethodPost, h.base+"/v1/call/fail", `{"code":-32602,"message":"m"}`, jsonHeader)
	httpDo(t, http.MethodPost, h.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":-32000,"message":"m"}}`, jsonHeader)
	httpDo(t, http.MethodPost, h.base+"/v1/demo/add", `{"a":2,"b":3}`, jsonHeader)
	httpDo(t, http.MethodPost, h.base+"/demo.v1.Demo/Add", `{"a":2,"b":3}`, http.Header{"Content-Type": {"application/json"}, "Connect-Protocol-Version": {"1"}})
	if _, err := h.bridge.Subscribe(ctxT(t), &wsbridgev1.SubscribeRequest{Methods: []string{"tick"}}); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "the stream open", func() bool { return h.srv.Bridge().Stats().Consumers == 1 })
	h.stop() // ends the stream: its line is written at its end
	var calls []map[string]any
	var stream map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		switch m["msg"] {
		case "call":
			calls = append(calls, m)
		case "stream":
			if m["method"] == wsbridgev1.BridgeService_Subscribe_FullMethodName {
				stream = m
			}
		}
	}
	find := func(face, method string) map[string]any {
		for _, c := range calls {
			if c["face"] == face && c["method"] == method {
				return c
			}
		}
		t.Fatalf("no %s line for %s: %v", face, method, calls)
		return nil
	}
	if l := find("rest", "fail"); l["reason"] != "backend_error" || l["jsonrpc_code"] != float64(-32602) || l["http_status"] != float64(400) {
		t.Errorf("REST backend error: %v", l)
	}
	if l := find("rpc", "fail"); l["reason"] != "backend_error" || l["jsonrpc_code"] != float64(-32000) || l["http_status"] != nil {
		t.Errorf("/rpc backend error: %v", l)
	}
	find("rest-typed", "add")
	find("connect", "add")
	if stream == nil || stream["face"] != "grpc" || stream["duration_ms"] == nil || stream["messages"] == nil {
		t.Errorf("Subscribe's stream line: %v", stream)
	}
}

// The client chooses the method name: a call refused for a name of
// hundreds of kilobytes writes a line of a hundred-odd bytes, the cut
// said (attack review).
func TestAccessLogCapsTheMethodName(t *testing.T) {
	var buf syncBuffer
	h := start(t, demoBackend(t), func(o *Options) { o.AccessLog = slog.New(slog.NewJSONHandler(&buf, nil)) })
	long := "é" + strings.Repeat("m", 300_000)
	httpDo(t, http.MethodPost, h.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"`+long+`"}`, http.Header{"Content-Type": {"application/json"}})
	bridgetest.Eventually(t, "the line", func() bool { return len(buf.lines(t)) == 1 })
	l := buf.lines(t)[0]
	m, _ := l["method"].(string)
	if len(m) > maxLoggedMethod+3 || !strings.HasPrefix(m, "émm") || !strings.HasSuffix(m, "...") || l["code"] != "InvalidArgument" {
		t.Fatalf("line %v (method %d bytes)", l["code"], len(m))
	}
	if n := len(buf.String()); n > 2000 {
		t.Fatalf("the line is %d bytes", n)
	}
}
