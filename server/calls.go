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
// without one (/rpc) both are refused.
func (s *Server) callFor(ctx context.Context, f face, consumer *bridge.Consumer, method string, params json.RawMessage) (json.RawMessage, error) {
	s.counters.request(f)
	res, err := s.dispatch(ctx, consumer, method, params)
	s.counters.finished(err)
	return res, err
}

func (s *Server) dispatch(ctx context.Context, consumer *bridge.Consumer, method string, params json.RawMessage) (json.RawMessage, error) {
	if method == methodListen || method == methodUnlisten {
		if consumer == nil {
			return nil, &bridge.Error{Code: bridge.CodeBackendError, Message: errNoSubscriptOnH.message,
				RPC: &bridge.RPCError{Code: bridge.RPCMethodNotFound, Message: errNoSubscriptOnH.message}}
		}
		methods, ok := listenParams(params)
		if !ok {
			return nil, invalid("%s takes a list of notification methods", method)
		}
		if method == methodListen {
			consumer.Listen(methods...)
		} else {
			consumer.Unlisten(methods...)
		}
		return json.RawMessage("true"), nil
	}
	if consumer == nil {
		if strings.HasPrefix(method, "wsbridge_") || s.bridge.IsSubscribeMethod(method) {
			return nil, &bridge.Error{Code: bridge.CodeBackendError, Message: errNoSubscriptOnH.message,
				RPC: &bridge.RPCError{Code: bridge.RPCMethodNotFound, Message: errNoSubscriptOnH.message}}
		}
		return s.bridge.Call(ctx, method, params, bridge.CallOptions{})
	}
	return consumer.Call(ctx, method, params, bridge.CallOptions{})
}

func (s *Server) notifyFor(ctx context.Context, f face, method string, params json.RawMessage) {
	s.counters.request(f)
	err := s.bridge.Notify(ctx, method, params, bridge.CallOptions{})
	s.counters.finished(err)
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
