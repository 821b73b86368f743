package server

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// The caller's trace: its traceparent names this trace and span.
const (
	callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpan  = "00f067aa0ba902b7"
	traceparent = "00-" + callerTrace + "-" + callerSpan + "-01"
)

// tracedHarness starts a gateway that records its spans.
func tracedHarness(t *testing.T) (*harness, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	h := start(t, demoBackend(t), func(o *Options) { o.TracerProvider = tp })
	return h, rec
}

// backendSpan waits for the backend span of method and returns it with
// its parent, the face's span; both must be in the caller's trace, the
// face span a child of the caller's span.
func backendSpan(t *testing.T, rec *tracetest.SpanRecorder, method string) (backend, face sdktrace.ReadOnlySpan) {
	t.Helper()
	bridgetest.Eventually(t, "the spans of "+method, func() bool {
		backend, face = nil, nil
		for _, sp := range rec.Ended() {
			if sp.Name() == "jsonrpc "+method {
				backend = sp
			}
		}
		if backend == nil {
			return false
		}
		for _, sp := range rec.Ended() {
			if sp.SpanContext().SpanID() == backend.Parent().SpanID() {
				face = sp
			}
		}
		return face != nil
	})
	if backend.SpanKind() != trace.SpanKindClient || face.SpanKind() != trace.SpanKindServer {
		t.Errorf("%s: kinds %v (backend), %v (face %q)", method, backend.SpanKind(), face.SpanKind(), face.Name())
	}
	// The face span's parent is the caller's span, or (/rpc, /ws: a call
	// of an HTTP request or of a connection) the request's span, whose
	// parent is the caller's. (The /ws upgrade's span is still open.)
	parent := face.Parent().SpanID().String()
	for _, sp := range rec.Started() {
		if sp.SpanContext().SpanID().String() == parent && sp.SpanKind() == trace.SpanKindServer && strings.Contains(sp.Name(), " /") {
			parent = sp.Parent().SpanID().String()
		}
	}
	if backend.SpanContext().TraceID().String() != callerTrace || parent != callerSpan {
		t.Errorf("%s: trace %s, face span %q under %s; want trace %s under %s", method,
			backend.SpanContext().TraceID(), face.Name(), parent, callerTrace, callerSpan)
	}
	attrs := map[attribute.Key]attribute.Value{}
	for _, kv := range backend.Attributes() {
		attrs[kv.Key] = kv.Value
	}
	if attrs["rpc.system"].AsString() != "jsonrpc" || attrs["rpc.method"].AsString() != method ||
		attrs["rpc.jsonrpc.request_id"].AsInt64() == 0 || !strings.HasPrefix(attrs["server.address"].AsString(), "ws://127.0.0.1:") {
		t.Errorf("%s: backend span attributes %v", method, backend.Attributes())
	}
	return backend, face
}

// Every face: a call made with a traceparent yields a face span under the
// caller's and a backend span under the face's.
func TestTracingEveryFace(t *testing.T) {
	h, rec := tracedHarness(t)
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", traceparent)
	if _, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "add", Params: value(t, `[1,2]`)}); err != nil {
		t.Fatal(err)
	}
	if _, face := backendSpan(t, rec, "add"); face.Name() != "wsbridge.v1.BridgeService/Call" {
		t.Errorf("gRPC face span %q", face.Name())
	}

	header := http.Header{"Content-Type": {"application/json"}, "Traceparent": {traceparent}}
	if code, body := httpDo(t, http.MethodPost, h.base+"/v1/call/echo", `["rest"]`, header); code != 200 {
		t.Fatalf("REST: %d %s", code, body)
	}
	if _, face := backendSpan(t, rec, "echo"); face.Name() != "POST /v1/call/echo" {
		t.Errorf("REST face span %q", face.Name())
	}

	if code, body := httpDo(t, http.MethodPost, h.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"counter"}`, header); code != 200 {
		t.Fatalf("/rpc: %d %s", code, body)
	}
	if _, face := backendSpan(t, rec, "counter"); face.Name() != "rpc counter" {
		t.Errorf("/rpc face span %q", face.Name())
	}

	// /ws: the upgrade's traceparent is the parent of the connection's
	// calls.
	conn, _, err := websocket.Dial(ctxT(t), strings.Replace(h.base, "http", "ws", 1)+"/ws",
		&websocket.DialOptions{HTTPHeader: http.Header{"Traceparent": {traceparent}}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	c := &wsTestClient{t: t, conn: conn}
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"sleep","params":[1]}`); !strings.Contains(got, `"result"`) {
		t.Fatal(got)
	}
	backend, face := backendSpan(t, rec, "sleep")
	if face.Name() != "ws sleep" {
		t.Errorf("/ws face span %q", face.Name())
	}
	// A backend error is the backend span's status, with its code.
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"fail","params":{"code":-32602,"message":"no"}}`); !strings.Contains(got, `"error"`) {
		t.Fatal(got)
	}
	failed, _ := backendSpan(t, rec, "fail")
	if failed.Status().Code.String() != "Error" {
		t.Errorf("failed call's span status %v", failed.Status())
	}
	var code int64
	for _, kv := range failed.Attributes() {
		if kv.Key == "rpc.jsonrpc.error_code" {
			code = kv.Value.AsInt64()
		}
	}
	if code != -32602 || backend.Status().Code.String() == "Error" {
		t.Errorf("error code attribute %d; the good call's status %v", code, backend.Status())
	}
}

// Tracing off: no span is made anywhere (the default TracerProvider is
// not consulted), and the bridge traces nothing.
func TestTracingOffMakesNoSpans(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	if h.srv.tracer != nil || h.srv.opts.Bridge.TracerProvider != nil {
		t.Fatal("a tracer without a TracerProvider")
	}
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", traceparent)
	if _, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "add", Params: value(t, `[1,2]`)}); err != nil {
		t.Fatal(err)
	}
}
