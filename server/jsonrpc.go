package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/internal/rpcscan"
)

// clientRequest is one JSON-RPC request or notification from a client of
// /ws or /rpc, or the reason it is invalid.
type clientRequest struct {
	id     json.RawMessage // the client's id, byte for byte; nil for a notification
	method string
	params json.RawMessage // nil when absent or null
	// invalid is set when the request cannot be served: the reply is this
	// error with id (or null when the id itself is unusable).
	invalid *rpcError
}

func (r *clientRequest) isNotification() bool { return r.id == nil && r.invalid == nil }

// rpcError is a JSON-RPC error object sent to a client.
type rpcError struct {
	code    int
	message string
	data    json.RawMessage
}

var (
	errParse          = &rpcError{code: bridge.RPCParseError, message: "parse error"}
	errEmptyBatch     = &rpcError{code: bridge.RPCInvalidRequest, message: "invalid request: empty batch"}
	errNotObject      = &rpcError{code: bridge.RPCInvalidRequest, message: "invalid request: not a JSON object"}
	errVersion        = &rpcError{code: bridge.RPCInvalidRequest, message: `invalid request: "jsonrpc" must be "2.0"`}
	errMethod         = &rpcError{code: bridge.RPCInvalidRequest, message: "invalid request: method must be a non-empty string"}
	errParams         = &rpcError{code: bridge.RPCInvalidRequest, message: "invalid request: params must be an object or an array"}
	errID             = &rpcError{code: bridge.RPCInvalidRequest, message: "invalid request: id must be a string, a number or null"}
	errDuplicateID    = &rpcError{code: bridge.RPCInvalidRequest, message: "invalid request: a call with this id is still in flight"}
	errClientOverCap  = &rpcError{code: RPCOverloaded, message: "too many calls in flight on this connection"}
	errGoingAway      = &rpcError{code: RPCUnavailable, message: "gateway is shutting down", data: json.RawMessage(`{"reason":"draining"}`)}
	errNoSubscriptOnH = &rpcError{code: bridge.RPCMethodNotFound, message: "subscriptions need a connection that can push: use /ws or the gRPC Session"}
)

// parseClientFrame parses one WebSocket message or HTTP body. A parse error
// yields one invalid request (reply: -32700, id null); an empty batch one
// invalid request (-32600, id null, not in an array). The requests' slices
// point into data.
func parseClientFrame(data []byte) (reqs []clientRequest, batch bool) {
	data = bytes.TrimLeft(data, " \t\r\n")
	if !json.Valid(data) {
		return []clientRequest{{invalid: errParse}}, false
	}
	if data[0] == '[' {
		elems, _ := rpcscan.Array(data)
		if len(elems) == 0 {
			return []clientRequest{{invalid: errEmptyBatch}}, false
		}
		reqs = make([]clientRequest, len(elems))
		for i, e := range elems {
			reqs[i] = parseClientRequest(e)
		}
		return reqs, true
	}
	return []clientRequest{parseClientRequest(data)}, false
}

// parseClientRequest checks one request object, which is valid JSON.
// Members are matched exactly (encoding/json would take "Method" for
// "method").
func parseClientRequest(raw json.RawMessage) clientRequest {
	if len(raw) == 0 || raw[0] != '{' {
		return clientRequest{invalid: errNotObject}
	}
	var version, id, method, params []byte
	var hasID bool
	_ = rpcscan.Object(raw, func(key, value []byte) bool {
		switch string(key) {
		case "jsonrpc":
			version = value
		case "id":
			id, hasID = value, true
		case "method":
			method = value
		case "params":
			params = value
		}
		return true
	})
	var r clientRequest
	if hasID {
		switch id[0] {
		case '"', 'n', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			r.id = id
		default:
			return clientRequest{invalid: errID}
		}
	}
	fail := func(e *rpcError) clientRequest { return clientRequest{id: r.id, invalid: e} }
	if v, ok := jsonString(version); !ok || v != "2.0" {
		return fail(errVersion)
	}
	m, ok := jsonString(method)
	if !ok || m == "" {
		return fail(errMethod)
	}
	r.method = m
	if len(params) > 0 && string(params) != "null" {
		if params[0] != '{' && params[0] != '[' {
			return fail(errParams)
		}
		r.params = params
	}
	return r
}

// jsonString decodes a JSON string value (a valid span); ok is false for
// any other kind of value.
func jsonString(v []byte) (string, bool) {
	if len(v) < 2 || v[0] != '"' {
		return "", false
	}
	if bytes.IndexByte(v, '\\') < 0 {
		return string(v[1 : len(v)-1]), true
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return "", false
	}
	return s, true
}

func idOrNull(id json.RawMessage) json.RawMessage {
	if id == nil {
		return json.RawMessage("null")
	}
	return id
}

// appendResult appends a JSON-RPC success reply.
func appendResult(dst []byte, id, result json.RawMessage) []byte {
	if dst == nil {
		dst = make([]byte, 0, len(`{"jsonrpc":"2.0","id":,"result":}`)+len(idOrNull(id))+max(len(result), 4))
	}
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	dst = append(dst, idOrNull(id)...)
	dst = append(dst, `,"result":`...)
	if len(result) == 0 {
		result = json.RawMessage("null")
	}
	dst = append(dst, result...)
	return append(dst, '}')
}

// appendError appends a JSON-RPC error reply.
func appendError(dst []byte, id json.RawMessage, e *rpcError) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	dst = append(dst, idOrNull(id)...)
	dst = append(dst, `,"error":{"code":`...)
	dst = strconv.AppendInt(dst, int64(e.code), 10)
	dst = append(dst, `,"message":`...)
	msg, _ := json.Marshal(capMessage(e.message))
	dst = append(dst, msg...)
	if len(e.data) > 0 {
		dst = append(dst, `,"data":`...)
		dst = append(dst, e.data...)
	}
	return append(dst, `}}`...)
}

// appendNotification appends a JSON-RPC notification for a client.
func appendNotification(dst []byte, method string, params json.RawMessage) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","method":`...)
	m, _ := json.Marshal(method)
	dst = append(dst, m...)
	if len(params) > 0 {
		dst = append(dst, `,"params":`...)
		dst = append(dst, params...)
	}
	return append(dst, '}')
}

// errNoReply means the caller has gone: nothing is sent.
var errNoReply = errors.New("no reply")

// rpcErrorFor maps a call's failure to the JSON-RPC error a client gets, by
// the table in errors.go. A backend error keeps its message and data.
func rpcErrorFor(err error) (*rpcError, error) {
	m := mappingFor(err)
	if m.JSONRPC == rpcNoReply {
		return nil, errNoReply
	}
	var be *bridge.Error
	if errors.As(err, &be) && be.RPC != nil {
		return &rpcError{code: m.JSONRPC, message: be.RPC.Message, data: be.RPC.Data}, nil
	}
	e := &rpcError{code: m.JSONRPC, message: err.Error()}
	if reason := unavailableReason(err); reason != "" {
		e.data = json.RawMessage(`{"reason":"` + reason + `"}`)
	}
	return e, nil
}
