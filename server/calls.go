package server

import (
	"context"
	"encoding/json"
	"strings"

	"github.com/wsbridge/wsbridge/bridge"
)

// Gateway-local JSON-RPC methods of /ws and Session: they change which
// backend notifications the client receives by method and never reach the
// backend. Params: ["tick", ...] or {"methods": ["tick", ...]}; "*" is every
// method.
const (
	methodListen   = "wsbridge_subscribe"
	methodUnlisten = "wsbridge_unsubscribe"
)

func listenParams(params json.RawMessage) ([]string, bool) {
	var list []string
	if json.Unmarshal(params, &list) == nil && len(list) > 0 {
		return list, true
	}
	var obj struct {
		Methods []string `json:"methods"`
	}
	if json.Unmarshal(params, &obj) == nil && len(obj.Methods) > 0 {
		return obj.Methods, true
	}
	return nil, false
}

// callFor serves one client call from any JSON-RPC face. With a consumer
// (/ws, Session) subscriptions are routed to it and the local methods work;
// without one (/rpc) both are refused. Call release once the reply is
// queued: until then the notifications of a subscription the call made
// are held back.
func (s *Server) callFor(ctx context.Context, f face, consumer *bridge.Consumer, method string, params json.RawMessage) (res json.RawMessage, release func(), err error) {
	start := s.counters.request(f)
	res, release, err = s.dispatch(ctx, consumer, method, params)
	s.counters.finished(f, method, start, err)
	return res, release, err
}

func noRelease() {}

// goFor is callFor without a goroutine: done receives the outcome (see
// bridge.Bridge.Go), and cancel gives up on the call.
func (s *Server) goFor(f face, consumer *bridge.Consumer, method string, params json.RawMessage, done func(json.RawMessage, func(), error)) (cancel func()) {
	start := s.counters.request(f)
	if method == methodListen || method == methodUnlisten {
		res, release, err := s.dispatch(context.Background(), consumer, method, params)
		s.counters.finished(f, method, start, err)
		done(res, release, err)
		return noRelease
	}
	return consumer.Go(method, params, bridge.CallOptions{}, func(res json.RawMessage, release func(), err error) {
		s.counters.finished(f, method, start, err)
		done(res, release, err)
	})
}

func (s *Server) dispatch(ctx context.Context, consumer *bridge.Consumer, method string, params json.RawMessage) (json.RawMessage, func(), error) {
	if method == methodListen || method == methodUnlisten {
		if consumer == nil {
			return nil, noRelease, errNoPush()
		}
		methods, ok := listenParams(params)
		if !ok {
			return nil, noRelease, invalid("%s takes a list of notification methods", method)
		}
		if method == methodListen {
			consumer.Listen(methods...)
		} else {
			consumer.Unlisten(methods...)
		}
		return json.RawMessage("true"), noRelease, nil
	}
	if consumer == nil {
		if strings.HasPrefix(method, "wsbridge_") || s.bridge.IsSubscribeMethod(method) {
			return nil, noRelease, errNoPush()
		}
		res, err := s.bridge.Call(ctx, method, params, bridge.CallOptions{})
		return res, noRelease, err
	}
	return consumer.CallHeld(ctx, method, params, bridge.CallOptions{})
}

// errNoPush refuses subscriptions where nothing can be pushed.
func errNoPush() error {
	return &bridge.Error{Code: bridge.CodeBackendError, Message: errNoSubscriptOnH.message,
		RPC: &bridge.RPCError{Code: bridge.RPCMethodNotFound, Message: errNoSubscriptOnH.message}}
}

func (s *Server) notifyFor(ctx context.Context, f face, method string, params json.RawMessage) {
	start := s.counters.request(f)
	err := s.bridge.Notify(ctx, method, params, bridge.CallOptions{})
	s.counters.finished(f, method, start, err)
	if err != nil {
		s.log.Debug("client notification not forwarded", "err", err)
	}
}

// reply builds the JSON-RPC reply for one call, or nil when none is due
// (the caller has gone).
func reply(id json.RawMessage, res json.RawMessage, err error) []byte {
	if err == nil {
		return appendResult(nil, id, res)
	}
	e, noReply := rpcErrorFor(err)
	if noReply != nil {
		return nil
	}
	return appendError(nil, id, e)
}
