package server

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/wsbridge/wsbridge/bridge"
)

// notifications is a client's stream of backend notifications, whatever
// carries it: a gRPC Subscribe stream (and its NDJSON twin), a
// Server-Sent Events stream, a typed server-streaming rpc, or the push
// side of a session (/ws, gRPC Session). It is the one place that holds
// what such a stream guarantees:
//   - the allow and deny lists hold for the methods listened to (listen);
//   - the client's budgets of subscriptions and listened methods are
//     shared by all its streams on one connection (bridge.Budget; see
//     clientBudget);
//   - a client that does not keep up is ended alone, and counted;
//   - a lost subscription and a gap (--resubscribe) reach the client by
//     the face's rule: as notifications (sessions, Subscribe, SSE), or as
//     the end of the stream with UNAVAILABLE (typed streams, which have no
//     place for them);
//   - revocation, the drain and counting come with its stream (see
//     openStream).
type notifications struct {
	// Static after newNotifications.
	s        *Server
	ctx      context.Context
	consumer *bridge.Consumer
	face     noteFace
}

// noteFace is a face's side of a notification stream.
type noteFace struct {
	// push hands a notification to the face's bounded queue; false when
	// it is full. It runs on the bridge's goroutines and must not block.
	push func(method string, params json.RawMessage) bool
	// slow ends a stream whose client does not keep up (see
	// slowConsumer).
	slow func()
	// end, if set, ends the stream when its subscriptions are lost, or
	// (gapEnds) when notifications may have been missed; without it those
	// go to push as notifications.
	end     func(err error)
	gapEnds bool
}

// newNotifications opens the notification stream of a client (ctx names
// it) on face f.
func (s *Server) newNotifications(ctx context.Context, f noteFace) *notifications {
	n := &notifications{s: s, ctx: ctx, face: f}
	n.consumer = s.bridge.NewConsumer(n.deliver, bridge.WithBudget(clientOf(ctx).budget()))
	return n
}

// deliver is the consumer's: it runs on the bridge's goroutines.
func (n *notifications) deliver(method string, params json.RawMessage) {
	switch method {
	case bridge.NotifySubscriptionLost:
		n.s.traceEvent(n.ctx, "subscription lost")
		if n.face.end != nil {
			n.face.end(errSubscriptionLost)
			return
		}
	case bridge.NotifyGap:
		if n.face.end != nil && n.face.gapEnds {
			n.s.traceEvent(n.ctx, "gap")
			n.face.end(errGap)
			return
		}
	}
	if !n.face.push(method, params) {
		n.face.slow()
	}
}

// slowConsumer ends a client that does not keep up (end), and counts it,
// once: every face's slow consumer is counted here.
func (s *Server) slowConsumer(once *sync.Once, end func()) {
	once.Do(func() {
		s.counters.slowConsumers.Add(1)
		end()
	})
}

// listen adds methods the client receives by method ("*": all), when the
// allow and deny lists let it, within the client's budget.
func (n *notifications) listen(methods []string) error {
	for _, m := range methods {
		if m != "*" && !n.s.bridge.MethodAllowed(m) {
			return &bridge.Error{Code: bridge.CodePermissionDenied, Message: fmt.Sprintf("notifications of %s are not allowed (--allow-methods, --deny-methods)", m)}
		}
	}
	return n.consumer.Listen(methods...)
}

// close ends the stream: its subscriptions are released, and nothing is
// pushed once close returns.
func (n *notifications) close() { n.consumer.Close() }

// The ends of a stream that its notifications decide.
var (
	errSubscriptionLost = &bridge.Error{Code: bridge.CodeUnavailable,
		Message: "the backend subscription was lost; notifications may have been missed: subscribe again"}
	errGap = &bridge.Error{Code: bridge.CodeUnavailable,
		Message: "the backend connection was lost and the subscription re-made (--resubscribe); notifications may have been missed: subscribe again"}
)
