// Package jsonrpc is wsbridge's one model of JSON-RPC 2.0 messages
// (https://www.jsonrpc.org/specification): reading requests and batches
// from clients, reading replies and notifications from the backend,
// encoding requests, replies, errors and notifications, the error codes,
// and id handling. The gateway's faces (package server) and its backend
// link (package bridge) both use it, so that a message means the same on
// every path.
//
// Messages are scanned, not decoded: routing needs the id, the method and
// where the params or result are, not their contents. Member names match
// exactly, as the specification requires (encoding/json would take
// "Method" for "method"). Values are spans of the input; callers that keep
// them past the input's lifetime copy them.
//
// Everything that reads JSON text is in read.go, on internal/jsonscan:
// one entry per direction (ParseRequests for what a client sends,
// ParseMessages for what the backend sends, and BrokenFrameIDs for a
// backend frame that cannot be read whole), and the helpers for the params
// of subscription notifications (SubscriptionID, WithSubscriptionID,
// SubscriptionResult).
//
// The demo backend (package backend) has an independent implementation on
// purpose: it is the oracle the gateway's tests check this one against.
package jsonrpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/wsbridge/wsbridge/internal/jsonenc"
)

// The error codes of the specification, and the gateway's own conditions
// (the numbers proxyd uses, so that clients of either read them alike).
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternalError  = -32603

	CodePermissionDenied = -32001
	CodeUnavailable      = -32010
	CodeOverloaded       = -32012
	CodeTimeout          = -32015
	CodeRequestTooLarge  = -32021
)

// MaxMessageSize caps an error message the gateway passes on: a backend's
// message is not trusted to be short.
const MaxMessageSize = 1024

// Error is a JSON-RPC error object.
type Error struct {
	Code    int64           `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *Error) Error() string { return fmt.Sprintf("JSON-RPC error %d: %s", e.Code, e.Message) }

// Request is one request or notification read from a client, or the
// reason it cannot be served.
type Request struct {
	// ID is the client's id, byte for byte (nil for a notification).
	ID json.RawMessage
	// Method is the decoded method name.
	Method string
	// Params is nil when absent or null; otherwise an object or an array.
	Params json.RawMessage
	// Err, when set, is the error to reply with (to ID, or to null when the
	// id itself is unusable); Method and Params are then unset.
	Err *Error
}

// IsNotification reports whether r is a valid notification: no reply is
// due.
func (r *Request) IsNotification() bool { return r.ID == nil && r.Err == nil }

// The errors ParseRequests replies with.
var (
	ErrParse      = &Error{Code: CodeParseError, Message: "parse error"}
	ErrNotUTF8    = &Error{Code: CodeParseError, Message: "parse error: the message is not valid UTF-8"}
	ErrEmptyBatch = &Error{Code: CodeInvalidRequest, Message: "invalid request: empty batch"}
	ErrNotObject  = &Error{Code: CodeInvalidRequest, Message: "invalid request: not a JSON object"}
	ErrVersion    = &Error{Code: CodeInvalidRequest, Message: `invalid request: "jsonrpc" must be "2.0"`}
	ErrMethod     = &Error{Code: CodeInvalidRequest, Message: "invalid request: method must be a non-empty string"}
	ErrParams     = &Error{Code: CodeInvalidRequest, Message: "invalid request: params must be an object or an array"}
	ErrID         = &Error{Code: CodeInvalidRequest, Message: "invalid request: id must be a string, a number or null"}
)

// AppendString appends s as a JSON string (invalid UTF-8 becomes U+FFFD).
func AppendString(dst []byte, s string) []byte { return jsonenc.AppendString(dst, s) }

// IDKey returns a key that is equal for two ids (or subscription ids) that
// mean the same value: strings compare decoded ("\u0030x1" is "0x1"),
// numbers by their text. Use it wherever ids are compared; the raw id
// still goes back to its sender byte for byte.
func IDKey(id json.RawMessage) string {
	id = bytes.TrimSpace(id)
	if len(id) > 0 && id[0] == '"' {
		if s, ok := String(id); ok {
			return string(jsonenc.AppendString(nil, s))
		}
	}
	return string(id)
}

// nullID is the id of a reply to a message whose id could not be read.
var nullID = json.RawMessage("null")

func idOrNull(id json.RawMessage) json.RawMessage {
	if id == nil {
		return nullID
	}
	return id
}

// AppendResult appends a success reply.
func AppendResult(dst []byte, id, result json.RawMessage) []byte {
	if dst == nil {
		dst = make([]byte, 0, len(`{"jsonrpc":"2.0","id":,"result":}`)+len(idOrNull(id))+max(len(result), 4))
	}
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	dst = append(dst, idOrNull(id)...)
	dst = append(dst, `,"result":`...)
	if len(result) == 0 {
		result = nullID
	}
	dst = append(dst, result...)
	return append(dst, '}')
}

// AppendError appends an error reply. The message is cut to MaxMessageSize
// bytes of valid UTF-8.
func AppendError(dst []byte, id json.RawMessage, e *Error) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","id":`...)
	dst = append(dst, idOrNull(id)...)
	dst = append(dst, `,"error":{"code":`...)
	dst = strconv.AppendInt(dst, e.Code, 10)
	dst = append(dst, `,"message":`...)
	dst = jsonenc.AppendString(dst, CapMessage(e.Message))
	if len(e.Data) > 0 {
		dst = append(dst, `,"data":`...)
		dst = append(dst, e.Data...)
	}
	return append(dst, `}}`...)
}

// CapMessage keeps an error message to MaxMessageSize bytes of valid UTF-8
// (gRPC requires UTF-8 too).
func CapMessage(s string) string {
	if len(s) > MaxMessageSize {
		s = s[:MaxMessageSize] + "…"
	}
	return string(bytes.ToValidUTF8([]byte(s), []byte("\uFFFD")))
}

// AppendNotification appends a notification (a message without an id).
func AppendNotification(dst []byte, method string, params json.RawMessage) []byte {
	dst = append(dst, `{"jsonrpc":"2.0","method":`...)
	dst = jsonenc.AppendString(dst, method)
	if len(params) > 0 {
		dst = append(dst, `,"params":`...)
		dst = append(dst, params...)
	}
	return append(dst, '}')
}

// AppendRequest appends a request with a gateway id (or, with hasID false,
// a notification). quotedMethod is already a JSON string (AppendString);
// params must be nil or valid JSON, an object or an array.
func AppendRequest(dst []byte, id uint64, hasID bool, quotedMethod []byte, params json.RawMessage) []byte {
	dst = append(dst, `{"jsonrpc":"2.0",`...)
	if hasID {
		dst = append(dst, `"id":`...)
		dst = strconv.AppendUint(dst, id, 10)
		dst = append(dst, ',')
	}
	dst = append(dst, `"method":`...)
	dst = append(dst, quotedMethod...)
	if len(params) > 0 {
		dst = append(dst, `,"params":`...)
		dst = append(dst, params...)
	}
	return append(dst, '}')
}

// RequestSize bounds the length of AppendRequest's output: the envelope
// with the longest id (20 digits), the quoted method and the params.
func RequestSize(quotedMethod []byte, params json.RawMessage) int {
	return len(`{"jsonrpc":"2.0","id":,"method":,"params":}`) + 20 + len(quotedMethod) + len(params)
}

// ValidParams reports whether params (valid JSON) can be sent as params:
// absent, or an object or an array.
func ValidParams(params json.RawMessage) bool {
	p := bytes.TrimLeft(params, " \t\r\n")
	return len(p) == 0 || p[0] == '{' || p[0] == '['
}

// AppendBatch joins encoded messages into one batch (a JSON array).
func AppendBatch(dst []byte, elems [][]byte) []byte {
	n := 2
	for _, e := range elems {
		n += len(e) + 1
	}
	if dst == nil {
		dst = make([]byte, 0, n)
	}
	dst = append(dst, '[')
	for i, e := range elems {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, e...)
	}
	return append(dst, ']')
}

// Message is any message a JSON-RPC peer may send, with each member's span
// (nil when absent; a JSON null member is the 4 bytes "null").
type Message struct {
	JSONRPC, ID, Method, Params, Result, Error json.RawMessage
	// Raw is the whole message.
	Raw json.RawMessage
	// Err, when set, says why Raw is not a message (it is not a JSON
	// object); the members are then unset.
	Err error
}

// Kind classifies a Message.
type Kind int

// The kinds of message.
const (
	KindInvalid      Kind = iota // neither an id nor a method
	KindReply                    // an id and no method
	KindNotification             // a method and no id
	KindRequest                  // both: the peer is calling us
)

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// Kind classifies m.
func (m *Message) Kind() Kind {
	hasID := m.ID != nil && !isNull(m.ID)
	hasMethod := m.Method != nil
	switch {
	case hasMethod && hasID:
		return KindRequest
	case hasMethod:
		return KindNotification
	case hasID:
		return KindReply
	}
	return KindInvalid
}

// Why a reply is not valid JSON-RPC 2.0.
var (
	ErrBadVersion    = errors.New(`"jsonrpc" is not "2.0"`)
	ErrResultAndErr  = errors.New("reply has both result and error")
	ErrNoResultOrErr = errors.New("reply has neither result nor error")
	ErrBadErrorObj   = errors.New("reply error is not a JSON-RPC error object")
)

// Reply checks a reply and returns its result or its error object. Every
// error code, 0 included, is the backend's to choose and comes back as
// sent.
func (m *Message) Reply() (json.RawMessage, *Error, error) {
	if string(m.JSONRPC) != `"2.0"` {
		return nil, nil, ErrBadVersion
	}
	hasResult, hasError := m.Result != nil, m.Error != nil && !isNull(m.Error)
	switch {
	case hasResult && hasError:
		return nil, nil, ErrResultAndErr
	case hasResult:
		return m.Result, nil, nil
	case !hasError:
		return nil, nil, ErrNoResultOrErr
	}
	e, err := decodeError(m.Error)
	if err != nil {
		return nil, nil, err
	}
	return nil, e, nil
}

func decodeError(raw json.RawMessage) (*Error, error) {
	var obj struct {
		Code    *json.Number    `json:"code"`
		Message *string         `json:"message"`
		Data    json.RawMessage `json:"data"`
	}
	if raw[0] != '{' || json.Unmarshal(raw, &obj) != nil || obj.Code == nil || obj.Message == nil {
		return nil, ErrBadErrorObj
	}
	code, err := obj.Code.Int64()
	if err != nil {
		return nil, ErrBadErrorObj
	}
	e := &Error{Code: code, Message: *obj.Message}
	if obj.Data != nil && !isNull(obj.Data) {
		e.Data = obj.Data
	}
	return e, nil
}

// GatewayID reads a reply id as the gateway assigned it (a decimal
// uint64). wrongType is set when the peer sent the number back as a
// string ("7" for 7): the reply still names its caller, who learns that
// the reply was malformed.
func GatewayID(raw json.RawMessage) (id uint64, wrongType bool, ok bool) {
	if len(raw) == 0 {
		return 0, false, false
	}
	if raw[0] == '"' {
		s, sok := String(raw)
		if !sok {
			return 0, false, false
		}
		id, err := strconv.ParseUint(s, 10, 64)
		return id, true, err == nil
	}
	id, err := strconv.ParseUint(string(raw), 10, 64)
	return id, false, err == nil
}
