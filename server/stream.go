package server

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/wsbridge/wsbridge/bridge"
)

// stream is one long-lived conversation from the gateway to a client,
// whatever carries it: a gRPC stream (Subscribe and its REST twin,
// WatchStats, health Watch, a typed server stream, a Session), a
// Server-Sent Events stream, a /ws client. openStream is the one place
// each gets what every stream needs:
//   - revocation: a stream opened with a token ends (end, errRevoked) when
//     the token is no longer accepted (see watchRevocation);
//   - the drain: a stream that carries no calls ends at the start of a
//     shutdown's drain (end, errDrained); one that carries calls (a
//     session) goes away once they are answered (see session.goAway);
//   - observation: it is counted once, and logged when it ends, with its
//     duration and the messages it sent.
type stream struct {
	// Static after openStream.
	s      *Server
	ctx    context.Context
	face   face
	method string
	start  time.Time
	unhold func()
	// stopDrain unregisters the drain's callback; nil for a stream that
	// carries calls.
	stopDrain func() bool
	// counted: the stream is a request of its own (see streamKind).
	counted bool

	messages atomic.Int64
}

// errDrained is the cause of a stream ended by the drain.
var errDrained = errors.New("the gateway is shutting down")

// streamKind says what a stream carries.
type streamKind int

const (
	// streamQuiet carries what the gateway says of itself (WatchStats,
	// health Watch, reflection): not counted as a request.
	streamQuiet streamKind = iota
	// streamNotifications carries backend notifications (Subscribe, SSE,
	// a typed server stream): a request of its own.
	streamNotifications
	// streamCalls carries calls (a Session, a /ws client): each call is
	// counted, and the drain waits for them.
	streamCalls
)

// openStream begins a stream of face f that carries kind (method names
// it in the access log). end ends it, with the cause (errRevoked,
// errDrained); it may run on any goroutine and must not block. close the
// stream when it ends.
func (s *Server) openStream(ctx context.Context, f face, method string, kind streamKind, end func(cause error)) *stream {
	st := &stream{s: s, ctx: ctx, face: f, method: method, start: time.Now(), unhold: func() {}, counted: kind == streamNotifications}
	if st.counted {
		s.counters.request(f)
	}
	if id := identityOf(ctx); id != nil {
		st.unhold = s.holdToken(id.token, func() { end(errRevoked) })
	}
	if kind != streamCalls {
		st.stopDrain = context.AfterFunc(s.streamsCtx, func() { end(errDrained) })
	}
	return st
}

// sent counts a message sent on the stream.
func (st *stream) sent() { st.messages.Add(1) }

// close ends the stream with err (nil, or why it ended: the client left,
// a cause given to end, a failure) and observes it.
func (st *stream) close(err error) {
	st.unhold()
	if st.stopDrain != nil {
		st.stopDrain()
	}
	if st.counted && streamFailed(err) {
		st.s.counters.failed(err)
	}
	st.s.accessLogStream(st.ctx, st.face, st.method, st.start, st.messages.Load(), err)
}

// streamFailed reports whether a stream's end is a failure for the
// errors counted by reason: a backend's (the subscription was lost, a
// gap, a result that does not fit), not the client leaving or the
// drain. A slow consumer and a revoked token have counters of their own.
func streamFailed(err error) bool {
	switch bridge.CodeOf(err) {
	case 0, bridge.CodeCanceled, bridge.CodeDraining:
		return false
	}
	return true
}
