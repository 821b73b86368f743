package bridge

import (
	"bytes"
	"context"
	"encoding/json"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsbridge/wsbridge/internal/jsonenc"
	"github.com/wsbridge/wsbridge/internal/jsonscan"
)

// Tracing (Options.TracerProvider): each call to a backend is a client
// span, "jsonrpc <method>", child of the caller's span (the context's, or
// CallOptions.TraceParent for a call made with Go), with the gateway id
// and backend of each request it wrote, and events for what happened on
// the way: a wait for a dial, a retry on another backend, a hedge. Without
// a TracerProvider none of this runs.

const tracerName = "github.com/wsbridge/wsbridge/bridge"

// startSpan starts the span of one call, when tracing is on; otherwise it
// returns ctx and nil.
func (b *Bridge) startSpan(ctx context.Context, method string, co CallOptions) (context.Context, trace.Span) {
	if b.tracer == nil {
		return ctx, nil
	}
	if co.TraceParent.IsValid() && !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, co.TraceParent)
	}
	return b.tracer.Start(ctx, "jsonrpc "+method, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("rpc.system", "jsonrpc"), attribute.String("rpc.method", method)))
}

// endSpan records the call's outcome and ends span (nil: tracing is off).
func endSpan(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(attribute.String("wsbridge.error", CodeOf(err).String()))
		if be, ok := err.(*Error); ok && be.RPC != nil {
			span.SetAttributes(attribute.Int64("rpc.jsonrpc.error_code", be.RPC.Code))
		}
	}
	span.End()
}

// withTraceParam adds the call's trace context to params that are a JSON
// object, as the member name: {"traceparent": "00-..."} (W3C Trace
// Context), for a backend that continues the trace (Options.TraceParam).
// A member of that name the client sent goes, every duplicate of it
// however its name is escaped: parsers differ in which duplicate they
// keep (Go, JavaScript and Python keep the last), and none may read the
// client's. Other params go unchanged: JSON-RPC has no headers.
func withTraceParam(ctx context.Context, name string, params json.RawMessage) json.RawMessage {
	sc := trace.SpanContextFromContext(ctx)
	trimmed := bytes.TrimLeft(params, " \t\r\n")
	if !sc.IsValid() || len(trimmed) == 0 || trimmed[0] != '{' {
		return params
	}
	out := make([]byte, 0, len(params)+len(name)+80)
	out = append(out, '{')
	out = jsonenc.AppendString(out, name)
	out = append(out, `:{"traceparent":"00-`...)
	out = append(out, sc.TraceID().String()...)
	out = append(out, '-')
	out = append(out, sc.SpanID().String()...)
	out = append(out, '-')
	out = append(out, sc.TraceFlags().String()...)
	out = append(out, `"}`...)
	if hasMember(trimmed, name) {
		for _, m := range membersWithout(trimmed, name) {
			out = append(out, ',')
			out = append(out, m...)
		}
		return append(out, '}')
	}
	rest := bytes.TrimLeft(trimmed[1:], " \t\r\n")
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

// hasMember reports whether the valid JSON object obj has a top-level
// member called name (its key decoded).
func hasMember(obj []byte, name string) bool {
	found := false
	jsonscan.Object(obj, 0, func(key, _ []byte) {
		found = found || string(key) == name
	})
	return found
}

// membersWithout returns the top-level members of the valid JSON object
// obj (`"key":value`, the value as written), but those called name.
func membersWithout(obj []byte, name string) [][]byte {
	var kept [][]byte
	jsonscan.Object(obj, 0, func(key, value []byte) {
		if string(key) != name {
			m := jsonenc.AppendString(nil, string(key))
			kept = append(kept, append(append(m, ':'), value...))
		}
	})
	return kept
}
