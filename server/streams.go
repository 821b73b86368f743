package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/jsonpb"
	"github.com/wsbridge/wsbridge/internal/queue"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// streamOut is the bounded queue between the producers of one stream's
// messages (the bridge's goroutines) and the stream's sender:
// ClientBuffer messages and ClientBufferBytes bytes at most. A nil message
// is the end of the stream, behind what was queued before it (see push).
// end stops the stream at once.
type streamOut[T proto.Message] struct {
	s        *Server
	q        *queue.Queue[T]
	endOnce  sync.Once
	ended    chan struct{}
	err      error // written once before ended is closed
	slowOnce sync.Once
}

func newStreamOut[T proto.Message](s *Server) *streamOut[T] {
	size := func(m T) int { return proto.Size(m) }
	return &streamOut[T]{s: s, q: queue.NewSized(s.opts.ClientBuffer, s.opts.ClientBufferBytes, size), ended: make(chan struct{})}
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

// noteFace is the queue's side of a notification stream: convert makes
// each notification a message (its error ends the stream); the stream
// ends when its client does not keep up (errTooSlow), when its
// subscriptions are lost, and with gapEnds when notifications may have
// been missed.
func (o *streamOut[T]) noteFace(convert func(method string, params json.RawMessage) (T, error), gapEnds bool) noteFace {
	return noteFace{
		push: func(method string, params json.RawMessage) bool {
			v, err := convert(method, params)
			if err != nil {
				o.end(err)
				return true
			}
			return o.push(v)
		},
		slow:    func() { o.s.slowConsumer(&o.slowOnce, func() { o.end(errTooSlow) }) },
		end:     o.end,
		gapEnds: gapEnds,
	}
}

// run sends what is queued until the stream ends (its error: why) or ctx
// is done (the context's cause: the client left, errRevoked, errDrained).
// With keepAlive, it calls that every sseKeepAlive while idle.
func (o *streamOut[T]) run(ctx context.Context, send func(T) error, keepAlive func() error) error {
	var tick <-chan time.Time
	if keepAlive != nil {
		t := time.NewTicker(sseKeepAlive)
		defer t.Stop()
		tick = t.C
	}
	var buf []T
	for {
		select {
		case <-o.q.Ready():
			var end bool
			var err error
			if buf, end, err = o.sendAll(send, buf); err != nil {
				return err
			} else if end {
				return errDrained
			}
		case <-tick:
			if err := keepAlive(); err != nil {
				return err
			}
		case <-o.ended:
			return o.err
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

var errTooSlow = status.Error(codes.ResourceExhausted, "stream buffer full: the client does not keep up with its notifications")

func notificationProto(method string, params json.RawMessage) (*wsbridgev1.Notification, error) {
	n := &wsbridgev1.Notification{Method: method}
	if len(params) > 0 {
		if v, err := jsonpb.ToValue(params); err == nil {
			n.Params = v
		}
	}
	return n, nil
}

// drainingStatus ends a stream at shutdown.
var drainingStatus = grpcError(errGoingAway)

// streamStatus is the gRPC status a stream ends with for err: a cause
// its stream was ended with (revoked, drained), its notifications' end
// (lost, a gap, too slow), or the client's leaving.
func streamStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errRevoked):
		return status.Error(codes.Unauthenticated, errRevoked.Error())
	case errors.Is(err, errDrained):
		return drainingStatus
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return grpcError(err)
}

// Subscribe streams backend notifications by method. It ends at the start
// of a shutdown's drain (UNAVAILABLE, reason draining).
func (svc bridgeService) Subscribe(req *wsbridgev1.SubscribeRequest, stream wsbridgev1.BridgeService_SubscribeServer) error {
	s := svc.s
	ctx := stream.Context()
	out := newStreamOut[*wsbridgev1.Notification](s)
	n := s.newNotifications(ctx, out.noteFace(notificationProto, false))
	defer n.close()
	methods := req.GetMethods()
	if len(methods) == 0 {
		methods = []string{"*"}
	}
	if err := n.listen(methods); err != nil {
		return grpcError(err)
	}
	return streamStatus(out.run(ctx, stream.Send, nil))
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
	n, _ := notificationProto(method, params)
	return o.q.push(&wsbridgev1.SessionResponse{Kind: &wsbridgev1.SessionResponse_Notification{Notification: n}})
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
	ss := s.newSession(ctx, faceSession, out, true)
	s.trackSession(ss, cancel)
	defer s.untrackSession(ss)
	defer ss.close()

	recvDone := make(chan error, 1)
	go func() {
		for {
			if !ss.waitForRoom(ctx.Done()) { // backpressure (see session.waitForRoom)
				recvDone <- ctx.Err()
				return
			}
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
