package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/jsonpb"
)

// streamOut is the bounded queue between a consumer's deliveries (on the
// backend reader) and one gRPC stream's sender. Overflow ends the stream.
type streamOut[T any] struct {
	ch      chan T
	endOnce sync.Once
	ended   chan struct{}
	err     error // written once before ended is closed
	onSlow  func()
}

func newStreamOut[T any](size int, onSlow func()) *streamOut[T] {
	return &streamOut[T]{ch: make(chan T, size), ended: make(chan struct{}), onSlow: onSlow}
}

func (o *streamOut[T]) end(err error) {
	o.endOnce.Do(func() {
		o.err = err
		close(o.ended)
	})
}

func (o *streamOut[T]) push(v T) {
	select {
	case <-o.ended:
		return
	default:
	}
	select {
	case o.ch <- v:
	default:
		o.onSlow()
		o.end(status.Error(codes.ResourceExhausted, "stream buffer full: the client does not keep up with its notifications"))
	}
}

func notificationProto(method string, params json.RawMessage) *wsbridgev1.Notification {
	n := &wsbridgev1.Notification{Method: method}
	if len(params) > 0 {
		if v, err := jsonpb.ToValue(params); err == nil {
			n.Params = v
		}
	}
	return n
}

// Subscribe streams backend notifications by method.
func (svc bridgeService) Subscribe(req *wsbridgev1.SubscribeRequest, stream wsbridgev1.BridgeService_SubscribeServer) error {
	s := svc.s
	out := newStreamOut[*wsbridgev1.Notification](s.opts.ClientBuffer, func() { s.counters.slowConsumers.Add(1) })
	consumer := s.bridge.NewConsumer(func(method string, params json.RawMessage) {
		if method == bridge.NotifySubscriptionLost {
			out.end(status.Error(codes.Unavailable, "backend connection lost; notifications may have been missed: subscribe again"))
			return
		}
		out.push(notificationProto(method, params))
	})
	defer consumer.Close()
	methods := req.GetMethods()
	if len(methods) == 0 {
		methods = []string{"*"}
	}
	consumer.Listen(methods...)
	ctx := stream.Context()
	for {
		select {
		case n := <-out.ch:
			if err := stream.Send(n); err != nil {
				return err
			}
		case <-out.ended:
			return out.err
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// Session is the gRPC twin of /ws. The handler goroutine is the only
// sender; a receiver goroutine reads requests and starts a goroutine per
// call. On return the handler cancels and waits for the calls; the receiver
// ends with the stream.
func (svc bridgeService) Session(stream wsbridgev1.BridgeService_SessionServer) error {
	s := svc.s
	out := newStreamOut[*wsbridgev1.SessionResponse](s.opts.ClientBuffer, func() { s.counters.slowConsumers.Add(1) })
	consumer := s.bridge.NewConsumer(func(method string, params json.RawMessage) {
		out.push(&wsbridgev1.SessionResponse{Kind: &wsbridgev1.SessionResponse_Notification{Notification: notificationProto(method, params)}})
	})
	ctx, cancel := context.WithCancel(stream.Context())
	var (
		calls    sync.WaitGroup
		mu       sync.Mutex
		closed   bool                // guarded by mu: no call may start
		inflight = map[string]bool{} // guarded by mu: ids in flight
	)
	spawn := func(f func()) {
		mu.Lock()
		defer mu.Unlock()
		if !closed {
			calls.Go(f)
		}
	}
	defer func() {
		mu.Lock()
		closed = true
		mu.Unlock()
		cancel()
		calls.Wait()
		consumer.Close()
	}()

	recvDone := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvDone <- err
				return
			}
			id := req.GetId()
			if id == "" {
				if params, err := encodeParams(req.GetParams()); err == nil {
					spawn(func() { s.notifyFor(ctx, faceGRPC, req.GetMethod(), params) })
				}
				continue
			}
			mu.Lock()
			dup := inflight[id]
			over := s.opts.MaxInFlightPerClient > 0 && len(inflight) >= s.opts.MaxInFlightPerClient
			if !dup && !over {
				inflight[id] = true
			}
			mu.Unlock()
			if dup {
				out.push(sessionError(id, invalid("a call with id %q is still in flight", id)))
				continue
			}
			if over {
				out.push(sessionError(id, &bridge.Error{Code: bridge.CodeOverloaded, Message: "too many calls in flight in this session"}))
				continue
			}
			spawn(func() {
				resp, release := s.sessionCall(ctx, consumer, req)
				mu.Lock()
				delete(inflight, id)
				mu.Unlock()
				if resp != nil {
					out.push(resp)
				}
				release()
			})
		}
	}()

	for {
		select {
		case resp := <-out.ch:
			if err := stream.Send(resp); err != nil {
				return err
			}
		case err := <-recvDone:
			if !errors.Is(err, io.EOF) {
				return err
			}
			// The client is done sending: finish its calls, flush, end.
			mu.Lock()
			closed = true
			mu.Unlock()
			calls.Wait()
			for {
				select {
				case resp := <-out.ch:
					if err := stream.Send(resp); err != nil {
						return err
					}
				default:
					return out.err
				}
			}
		case <-out.ended:
			return out.err
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

func (s *Server) sessionCall(ctx context.Context, consumer *bridge.Consumer, req *wsbridgev1.SessionRequest) (*wsbridgev1.SessionResponse, func()) {
	params, err := encodeParams(req.GetParams())
	if err != nil {
		return sessionError(req.GetId(), err), noRelease
	}
	callCtx := ctx
	if req.GetTimeout() != nil {
		co, err := callOptions(ctx, req.GetTimeout(), false)
		if err != nil {
			return sessionError(req.GetId(), err), noRelease
		}
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, co.Timeout)
		defer cancel()
	}
	raw, release, err := s.callFor(callCtx, faceGRPC, consumer, req.GetMethod(), params)
	if err != nil {
		if ctx.Err() != nil {
			return nil, release // the session is over
		}
		return sessionError(req.GetId(), err), release
	}
	v, err := resultValue(raw)
	if err != nil {
		return sessionError(req.GetId(), err), release
	}
	return &wsbridgev1.SessionResponse{Kind: &wsbridgev1.SessionResponse_Reply{Reply: &wsbridgev1.SessionReply{
		Id: req.GetId(), Outcome: &wsbridgev1.SessionReply_Result{Result: v}}}}, release
}

func sessionError(id string, err error) *wsbridgev1.SessionResponse {
	st := status.Convert(grpcError(err))
	se := &wsbridgev1.SessionError{Code: int32(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		if be, ok := d.(*wsbridgev1.BackendError); ok {
			se.Backend = be
		}
	}
	return &wsbridgev1.SessionResponse{Kind: &wsbridgev1.SessionResponse_Reply{Reply: &wsbridgev1.SessionReply{
		Id: id, Outcome: &wsbridgev1.SessionReply_Error{Error: se}}}}
}
