package main

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// otlpReceiver is an OTLP trace receiver over gRPC and over HTTP
// (protobuf), keeping what it receives.
type otlpReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	mu      sync.Mutex
	spans   []*tracepb.Span
	service string // service.name of the last batch
}

func (r *otlpReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				r.service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	var msg coltracepb.ExportTraceServiceRequest
	if req.URL.Path != "/v1/traces" || proto.Unmarshal(body, &msg) != nil {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	_, _ = r.Export(req.Context(), &msg)
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

// span returns the received span named name, if any.
func (r *otlpReceiver) span(name string) *tracepb.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, sp := range r.spans {
		if sp.GetName() == name {
			return sp
		}
	}
	return nil
}

// The binary exports its spans to an OTLP receiver, configured by the
// standard OTEL_* variables, over gRPC and over HTTP: a Call made with a
// traceparent yields the face span under the caller's and the backend
// span under it; --backend-trace-param puts the backend span's context in
// the params.
func TestTracingExportsOverOTLP(t *testing.T) {
	const callerTrace, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for _, protocol := range []string{"grpc", "http/protobuf"} {
		t.Run(protocol, func(t *testing.T) {
			rec := &otlpReceiver{}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			if protocol == "grpc" {
				gs := grpc.NewServer()
				coltracepb.RegisterTraceServiceServer(gs, rec)
				go gs.Serve(ln)
				t.Cleanup(gs.Stop)
			} else {
				hs := &http.Server{Handler: rec}
				go hs.Serve(ln)
				t.Cleanup(func() { hs.Close() })
			}
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+ln.Addr().String())
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
			t.Setenv("OTEL_SERVICE_NAME", "wsbridge-under-test")
			t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50") // ms: export at once
			g := startGateway(t, "--demo", "--backend-trace-param", "trace")
			g.mu.Lock()
			on := strings.Contains(strings.Join(g.all, "\n"), `"msg":"tracing on"`)
			g.mu.Unlock()
			if !on {
				t.Fatal(`no "tracing on" in the log`)
			}

			ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
			res, err := g.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "echo", Params: params(t, `{"x":1}`)})
			if err != nil {
				t.Fatal(err)
			}
			echoed := res.GetResult().GetStructValue().GetFields()
			tp := echoed["trace"].GetStructValue().GetFields()["traceparent"].GetStringValue()
			if echoed["x"].GetNumberValue() != 1 || !strings.HasPrefix(tp, "00-"+callerTrace+"-") {
				t.Fatalf("params at the backend: %v", echoed)
			}

			var face, backend *tracepb.Span
			deadline := time.Now().Add(20 * time.Second)
			for face == nil || backend == nil {
				if time.Now().After(deadline) {
					t.Fatalf("spans not exported: face %v, backend %v", face, backend)
				}
				time.Sleep(20 * time.Millisecond)
				face, backend = rec.span("wsbridge.v1.BridgeService/Call"), rec.span("jsonrpc echo")
			}
			hexOf := func(b []byte) string { return hex.EncodeToString(b) }
			if hexOf(face.GetTraceId()) != callerTrace || hexOf(face.GetParentSpanId()) != callerSpan || face.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
				t.Errorf("face span: trace %s parent %s kind %v", hexOf(face.GetTraceId()), hexOf(face.GetParentSpanId()), face.GetKind())
			}
			if hexOf(backend.GetParentSpanId()) != hexOf(face.GetSpanId()) || backend.GetKind() != tracepb.Span_SPAN_KIND_CLIENT {
				t.Errorf("backend span: parent %s (face %s), kind %v", hexOf(backend.GetParentSpanId()), hexOf(face.GetSpanId()), backend.GetKind())
			}
			if want := "00-" + callerTrace + "-" + hexOf(backend.GetSpanId()) + "-01"; tp != want {
				t.Errorf("the backend got traceparent %s, want its span's %s", tp, want)
			}
			attrs := map[string]string{}
			for _, kv := range backend.GetAttributes() {
				attrs[kv.GetKey()] = kv.GetValue().String()
			}
			if !strings.Contains(attrs["rpc.method"], "echo") || attrs["rpc.jsonrpc.request_id"] == "" || !strings.Contains(attrs["server.address"], "ws://127.0.0.1:") {
				t.Errorf("backend span attributes %v", attrs)
			}
			rec.mu.Lock()
			service := rec.service
			rec.mu.Unlock()
			if service != "wsbridge-under-test" {
				t.Errorf("service.name %q", service)
			}
		})
	}
}
