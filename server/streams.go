package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/jsonpb"
	"github.com/wsbridge/wsbridge/internal/queue"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// streamOut is the bounded queue between the producers of one gRPC
// stream's messages (the bridge's goroutines) and the stream's sender:
// ClientBuffer messages and ClientBufferBytes bytes at most. A nil message
// is the end of the stream, behind what was queued before it (see push).
// end stops the stream at once.
type streamOut[T proto.Message] struct {
	q       *queue.Queue[T]
	endOnce sync.Once
	ended   chan struct{}
	err     error // written once before ended is closed
}

func newStreamOut[T proto.Message](s *Server) *streamOut[T] {
	size := func(m T) int { return proto.Size(m) }
	return &streamOut[T]{q: queue.NewSized(s.opts.ClientBuffer, s.opts.ClientBufferBytes, size), ended: make(chan struct{})}
}

// sendAll sends what is queued (after the queue's Ready fired) until nil,
// the end of the stream: then it reports end.
func (o *streamOut[T]) sendAll(send func(T) error, buf []T) (rest []T, end bool, err error) {
	buf = o.q.Take(buf)
	defer clear(buf)
	for _, v := range buf {
		if !v.ProtoReflect().IsValid() { // nil: the end of the stream
			return buf[:0], true, nil
		}
		if err := send(v); err != nil {
			return buf[:0], false, err
		}
	}
	return buf[:0], false, nil
}

func (o *streamOut[T]) end(err error) {
	o.endOnce.Do(func() {
		o.err = err
		close(o.ended)
	})
}

// push queues v; false when the queue is full. Messages for a stream that
// has ended are dropped.
func (o *streamOut[T]) push(v T) bool {
	select {
	case <-o.ended:
		return true
	default:
	}
	return o.q.Push(v)
}

var errTooSlow = status.Error(codes.ResourceExhausted, "stream buffer full: the client does not keep up with its notifications")

func notificationProto(method string, params json.RawMessage) *wsbridgev1.Notification {
	n := &wsbridgev1.Notification{Method: method}
	if len(params) > 0 {
		if v, err := jsonpb.ToValue(params); err == nil {
			n.Params = v
		}
	}
	return n
}

// drainingStatus ends a stream at shutdown.
var drainingStatus = grpcError(errGoingAway)

// Subscribe streams backend notifications by method. It ends at the start
// of a shutdown's drain (UNAVAILABLE, reason draining).
func (svc bridgeService) Subscribe(req *wsbridgev1.SubscribeRequest, stream wsbridgev1.BridgeService_SubscribeServer) error {
	s := svc.s
	out := newStreamOut[*wsbridgev1.Notification](s)
	var slowOnce sync.Once
	consumer := s.bridge.NewConsumer(func(method string, params json.RawMessage) {
		if method == bridge.NotifySubscriptionLost {
			s.traceEvent(stream.Context(), "subscription lost")
			out.end(status.Error(codes.Unavailable, "backend connection lost; notifications may have been missed: subscribe again"))
			return
		}
		if !out.push(notificationProto(method, params)) {
			slowOnce.Do(func() { s.counters.slowConsumers.Add(1) })
			out.end(errTooSlow)
		}
	})
	defer consumer.Close()
	methods := req.GetMethods()
	if len(methods) == 0 {
		methods = []string{"*"}
	}
	for _, m := range methods {
		if m != "*" && !s.bridge.MethodAllowed(m) {
			return status.Errorf(codes.PermissionDenied, "notifications of %s are not allowed (--allow-methods, --deny-methods)", m)
		}
	}
	if err := consumer.Listen(methods...); err != nil {
		return grpcError(err)
	}
	ctx := stream.Context()
	var buf []*wsbridgev1.Notification
	for {
		select {
		case <-out.q.Ready():
			var err error
			if buf, _, err = out.sendAll(stream.Send, buf); err != nil {
				return err
			}
		case <-out.ended:
			return out.err
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// sessionStream is the gRPC Session face's side of a session: replies and
// notifications as SessionResponse messages, queued for the handler, which
// is the stream's only sender.
type sessionStream struct {
	q *streamOut[*wsbridgev1.SessionResponse]
}

func (o sessionStream) reply(_ bool, replies []reply) bool {
	for _, rep := range replies {
		if !o.q.push(sessionReply(rep)) {
			return false
		}
	}
	return true
}

func (o sessionStream) notify(method string, params json.RawMessage) bool {
	return o.q.push(&wsbridgev1.SessionResponse{Kind: &wsbridgev1.SessionResponse_Notification{Notification: notificationProto(method, params)}})
}

// leave queues the end of the stream (nil) behind the replies: the sender
// then ends it with UNAVAILABLE, reason draining.
func (o sessionStream) leave() {
	if !o.q.push(nil) {
		o.q.end(drainingStatus)
	}
}

func (o sessionStream) endSlow(string) { o.q.end(errTooSlow) }

// Session is the gRPC twin of /ws: one session (see session) whose
// requests come from the stream. The handler goroutine is the only
// sender. A receiver goroutine reads requests into the session; it ends
// when the stream does (grpc-go fails Recv once the handler has returned),
// and the session refuses what it reads after close.
func (svc bridgeService) Session(stream wsbridgev1.BridgeService_SessionServer) error {
	s := svc.s
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	out := sessionStream{q: newStreamOut[*wsbridgev1.SessionResponse](s)}
	ss := s.newSession(ctx, faceGRPC, out, true)
	s.trackSession(ss, cancel)
	defer s.untrackSession(ss)
	defer ss.close()

	recvDone := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvDone <- err
				return
			}
			r, co := sessionRequest(ctx, req)
			ss.serve([]jsonrpc.Request{r}, false, co)
		}
	}()

	// flush sends what is queued; nil (the end of the stream) ends it
	// with UNAVAILABLE, reason draining.
	var buf []*wsbridgev1.SessionResponse
	flush := func() (done bool, err error) {
		var end bool
		buf, end, err = out.q.sendAll(stream.Send, buf)
		if end {
			return true, drainingStatus
		}
		return err != nil, err
	}
	for {
		select {
		case <-out.q.q.Ready():
			if done, err := flush(); done {
				return err
			}
		case err := <-recvDone:
			if !errors.Is(err, io.EOF) {
				return err
			}
			// The client is done sending: finish its calls, flush, end.
			ss.wait(ctx)
			select {
			case <-out.q.ended:
				return out.q.err
			default:
			}
			_, err = flush()
			return err
		case <-out.q.ended:
			return out.q.err
		case <-ctx.Done():
			if stream.Context().Err() == nil {
				return drainingStatus // ended by shutdown (see closeSessions)
			}
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// sessionRequest turns a SessionRequest into the session's request: its
// id as a JSON string (empty: a notification), or the reason it cannot be
// served.
func sessionRequest(ctx context.Context, req *wsbridgev1.SessionRequest) (jsonrpc.Request, bridge.CallOptions) {
	r := jsonrpc.Request{Method: req.GetMethod()}
	if req.GetId() != "" {
		r.ID = jsonrpc.AppendString(nil, req.GetId())
	}
	var co bridge.CallOptions
	params, err := encodeParams(req.GetParams())
	if err == nil && req.GetTimeout() != nil {
		co, err = callOptions(ctx, req.GetTimeout(), false)
	}
	if err != nil {
		return jsonrpc.Request{ID: r.ID, Err: &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: err.Error()}}, co
	}
	r.Params = params
	return r, co
}

// sessionReply is the SessionResponse for one call's outcome.
func sessionReply(rep reply) *wsbridgev1.SessionResponse {
	id, _ := jsonrpc.String(rep.id)
	if rep.err == nil {
		v, err := resultValue(rep.result)
		if err == nil {
			return &wsbridgev1.SessionResponse{Kind: &wsbridgev1.SessionResponse_Reply{Reply: &wsbridgev1.SessionReply{
				Id: id, Outcome: &wsbridgev1.SessionReply_Result{Result: v}}}}
		}
		rep.err = err
	}
	st := status.Convert(grpcError(rep.err))
	se := &wsbridgev1.SessionError{Code: int32(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		if be, ok := d.(*wsbridgev1.BackendError); ok {
			se.Backend = be
		}
	}
	return &wsbridgev1.SessionResponse{Kind: &wsbridgev1.SessionResponse_Reply{Reply: &wsbridgev1.SessionReply{
		Id: id, Outcome: &wsbridgev1.SessionReply_Error{Error: se}}}}
}
