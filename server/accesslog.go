package server

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/bridge"
)

// The access log (Options.AccessLog): one line per finished client call,
// on every face: face, method, gRPC code, latency, the backend that took
// it, request and response bytes (params and result), the client's
// address, and the trace id when tracing is on. Never params, results or
// credentials. Off (nil) by default; AccessLogSample keeps that share of
// the successful calls (every failed call is logged).

// accessEntry gathers what one call's line needs.
type accessEntry struct {
	s       *Server
	ctx     context.Context
	face    face
	method  string
	start   time.Time
	client  *client
	backend atomic.Pointer[string]
	reqLen  int
}

// accessLog starts an entry for a call, or returns nil when the access
// log is off; with an entry, co reports the backend to it.
func (s *Server) accessLog(ctx context.Context, f face, method string, c *client, reqLen int, co *bridge.CallOptions) *accessEntry {
	if s.opts.AccessLog == nil {
		return nil
	}
	e := &accessEntry{s: s, ctx: ctx, face: f, method: logMethod(method), start: time.Now(), client: c, reqLen: reqLen}
	if co != nil {
		co.OnBackend = func(url string) { e.backend.Store(&url) }
		if co.TraceParent.IsValid() { // a session's call: its own span
			e.ctx = trace.ContextWithSpanContext(ctx, co.TraceParent)
		}
	}
	return e
}

// done writes the entry's line (nothing for a nil entry).
func (e *accessEntry) done(respLen int, err error) {
	if e == nil {
		return
	}
	if err == nil && e.s.opts.AccessLogSample < 1 && rand.Float64() >= e.s.opts.AccessLogSample {
		return
	}
	attrs := []slog.Attr{
		slog.String("face", faceNames[e.face]), slog.String("method", e.method), slog.String("code", grpcCodeOf(err)),
		slog.Float64("latency_ms", float64(time.Since(e.start).Microseconds())/1000),
		slog.Int("request_bytes", e.reqLen), slog.Int("response_bytes", respLen),
	}
	e.write("call", append(attrs, failureAttrs(e.face, err)...))
}

// maxLoggedMethod bounds the method name a line shows: the client chose
// it, and a call refused for its name (up to the message size) must not
// make a line of that size.
const maxLoggedMethod = 128

// logMethod is method as a line shows it: cut at maxLoggedMethod bytes on
// a character boundary, with "..." saying it was cut.
func logMethod(method string) string {
	if len(method) <= maxLoggedMethod {
		return method
	}
	cut := maxLoggedMethod
	for cut > 0 && !utf8.RuneStart(method[cut]) {
		cut--
	}
	return method[:cut] + "..."
}

// failureAttrs explain a failed call in its access log line: the reason
// (the stats' errors_by_reason: unavailable, reply_lost, draining,
// deadline_exceeded, backend_error, ...: whether a retry is safe), the
// JSON-RPC code (the backend's, or the one a JSON-RPC client got) and the
// HTTP status where the face answers with one.
func failureAttrs(f face, err error) []slog.Attr {
	if err == nil {
		return nil
	}
	m := mappingFor(err)
	attrs := []slog.Attr{slog.String("reason", errorReason(err))}
	var be *bridge.Error
	switch {
	case errors.As(err, &be) && be.RPC != nil:
		attrs = append(attrs, slog.Int64("jsonrpc_code", be.RPC.Code))
	case (f == faceWS || f == faceRPC || f == faceSession) && !m.NoReply:
		attrs = append(attrs, slog.Int64("jsonrpc_code", m.JSONRPC))
	}
	switch f {
	case faceREST, faceRESTTyped, faceConnect:
		attrs = append(attrs, slog.Int("http_status", m.HTTP))
	}
	return attrs
}

// grpcCodeOf names the gRPC code of an outcome: a status's own, or the
// error table's.
func grpcCodeOf(err error) string {
	if err == nil {
		return "OK"
	}
	if st, ok := status.FromError(err); ok {
		return st.Code().String()
	}
	return mappingFor(err).GRPC.String()
}

// accessLogStream writes the line of a stream that has ended: its face,
// method, code, duration and the messages it sent.
func (s *Server) accessLogStream(ctx context.Context, f face, method string, start time.Time, messages int64, err error) {
	if s.opts.AccessLog == nil {
		return
	}
	e := &accessEntry{s: s, ctx: ctx, face: f, method: logMethod(method), start: start, client: clientOf(ctx)}
	e.write("stream", []slog.Attr{
		slog.String("face", faceNames[f]), slog.String("method", e.method), slog.String("code", grpcCodeOf(err)),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000), slog.Int64("messages", messages),
	})
}

// write adds the backend, client and trace id to attrs and logs them.
func (e *accessEntry) write(msg string, attrs []slog.Attr) {
	if b := e.backend.Load(); b != nil {
		attrs = append(attrs, slog.String("backend", *b))
	}
	if e.client != nil && e.client.addr != "" {
		attrs = append(attrs, slog.String("client", e.client.addr))
	}
	if sc := trace.SpanContextFromContext(e.ctx); sc.IsValid() {
		attrs = append(attrs, slog.String("trace_id", sc.TraceID().String()))
	}
	e.s.opts.AccessLog.LogAttrs(context.Background(), e.s.opts.AccessLogLevel, msg, attrs...)
}
