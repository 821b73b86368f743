package server

import (
	"context"
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/wsbridge/wsbridge/bridge"
)

// Tracing (Options.TracerProvider), on every face: gRPC calls get a server
// span from otelgrpc, HTTP requests (REST, /rpc, the /ws upgrade, the
// typed REST and Connect routes) from otelhttp, and each JSON-RPC call on
// /ws, /rpc and the gRPC Session a span of its own (their messages are
// calls, not requests). A W3C traceparent in gRPC metadata or an HTTP
// header is the parent. The bridge adds a client span per backend round
// trip under each. Without a TracerProvider none of this is installed.

const tracerName = "github.com/wsbridge/wsbridge/server"

func (s *Server) propagator() propagation.TextMapPropagator {
	if s.opts.Propagator != nil {
		return s.opts.Propagator
	}
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// grpcTracing is the gRPC server option that traces calls, if tracing is
// on.
func (s *Server) grpcTracing() []grpc.ServerOption {
	if s.opts.TracerProvider == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(s.opts.TracerProvider), otelgrpc.WithPropagators(s.propagator())))}
}

// httpTracing wraps the HTTP listener's handler, if tracing is on.
func (s *Server) httpTracing(h http.Handler) http.Handler {
	if s.opts.TracerProvider == nil {
		return h
	}
	return otelhttp.NewHandler(h, "wsbridge.http",
		otelhttp.WithTracerProvider(s.opts.TracerProvider), otelhttp.WithPropagators(s.propagator()),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method + " " + r.URL.Path }))
}

// traceCall starts the span of one JSON-RPC call of a session, and puts
// it in co as the parent of the backend's span; end ends it.
func (ss *session) traceCall(method string, co *bridge.CallOptions) (end func(error)) {
	if ss.s.tracer == nil {
		return noEnd
	}
	_, span := ss.s.tracer.Start(ss.ctx, faceNames[ss.face]+" "+method, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("rpc.system", "jsonrpc"), attribute.String("rpc.method", method),
			attribute.String("wsbridge.face", faceNames[ss.face])))
	co.TraceParent = span.SpanContext()
	return func(err error) {
		if err != nil {
			span.SetStatus(otelcodes.Error, err.Error())
		}
		span.End()
	}
}

func noEnd(error) {}

// traceEvent adds an event to the span of ctx (a stream's, a
// connection's), if tracing is on.
func (s *Server) traceEvent(ctx context.Context, name string) {
	if s.tracer != nil {
		trace.SpanFromContext(ctx).AddEvent(name)
	}
}
