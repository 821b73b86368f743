package server

import (
	"context"
	"time"

	"github.com/wsbridge/wsbridge/bridge"
)

// Observation: every call and every stream, on every face, is seen in one
// place from its start to its end. observe (and observeStream) count it in
// the stats and the metrics, write its access log line, and (for the
// JSON-RPC calls of a session, which no gRPC or HTTP span covers) trace
// it. No face counts, logs or traces a call itself.

// observation is one call (or one stream) being observed.
type observation struct {
	s        *Server
	face     face
	method   string
	start    time.Time
	access   *accessEntry
	endTrace func(error)
}

// observe starts observing a call of method made on face f with a
// request of reqLen bytes. With co, the call reports its backend to the
// access log; a session's call (session non-nil) also gets a span of its
// own, the parent of its backend span.
func (s *Server) observe(ctx context.Context, f face, method string, reqLen int, co *bridge.CallOptions, ss *session) *observation {
	o := &observation{s: s, face: f, method: method, start: s.counters.request(f), endTrace: noEnd}
	if ss != nil {
		o.endTrace = ss.traceCall(method, co)
	}
	o.access = s.accessLog(ctx, f, method, clientOf(ctx), reqLen, co)
	return o
}

// done ends the observation: the call's outcome was err, with a response
// of respLen bytes.
func (o *observation) done(respLen int, err error) {
	o.s.counters.finished(o.face, o.method, o.start, err)
	o.endTrace(err)
	o.access.done(respLen, err)
}

// observeRefusal observes a request refused before it became a call
// (invalid, over a limit): counted, and logged.
func (s *Server) observeRefusal(ctx context.Context, f face, method string, err error) {
	s.observe(ctx, f, method, 0, nil, nil).done(0, err)
}
