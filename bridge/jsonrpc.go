package bridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/wsbridge/wsbridge/internal/rpcscan"
)

// appendRequest appends a JSON-RPC 2.0 request (or, with hasID false, a
// notification) to dst. method is already a JSON string (see
// jsonenc.AppendString); params must be nil or valid JSON (object or array).
func appendRequest(dst []byte, id uint64, hasID bool, method []byte, params json.RawMessage) []byte {
	dst = append(dst, `{"jsonrpc":"2.0",`...)
	if hasID {
		dst = append(dst, `"id":`...)
		dst = strconv.AppendUint(dst, id, 10)
		dst = append(dst, ',')
	}
	dst = append(dst, `"method":`...)
	dst = append(dst, method...)
	if len(params) > 0 {
		dst = append(dst, `,"params":`...)
		dst = append(dst, params...)
	}
	return append(dst, '}')
}

// maxRequestSize bounds the length of appendRequest's output: the envelope
// with the longest id (20 digits), the quoted method and the params.
func maxRequestSize(quotedMethod []byte, params json.RawMessage) int {
	return len(`{"jsonrpc":"2.0","id":,"method":,"params":}`) + 20 + len(quotedMethod) + len(params)
}

// validParams reports whether params can be sent as JSON-RPC params: absent,
// or starting like an object or array. The caller guarantees valid JSON.
func validParams(params json.RawMessage) bool {
	p := bytes.TrimLeft(params, " \t\r\n")
	return len(p) == 0 || p[0] == '{' || p[0] == '['
}

// wireMessage is any JSON-RPC 2.0 message the backend may send. Absent
// members stay nil; a JSON null member is the 4 bytes "null".
type wireMessage struct {
	JSONRPC json.RawMessage `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  json.RawMessage `json:"method"`
	Params  json.RawMessage `json:"params"`
	Result  json.RawMessage `json:"result"`
	Error   json.RawMessage `json:"error"`
}

// messageKind classifies an incoming message.
type messageKind int

const (
	kindInvalid      messageKind = iota
	kindReply                    // has an id, no method
	kindNotification             // has a method, no id
	kindRequest                  // has both: the backend calling us
)

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

func (m *wireMessage) kind() messageKind {
	hasID := m.ID != nil && !isNull(m.ID)
	hasMethod := m.Method != nil
	switch {
	case hasMethod && hasID:
		return kindRequest
	case hasMethod:
		return kindNotification
	case hasID:
		return kindReply
	}
	return kindInvalid
}

// replyID is the id of a reply as the gateway assigned it. wrongType is set
// when the backend sent our number back as a string ("7" for 7): the reply
// still identifies its caller, who gets CodeMalformedReply.
func replyID(raw json.RawMessage) (id uint64, wrongType bool, ok bool) {
	if len(raw) == 0 {
		return 0, false, false
	}
	if raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0, false, false
		}
		id, err := strconv.ParseUint(s, 10, 64)
		return id, true, err == nil
	}
	id, err := strconv.ParseUint(string(raw), 10, 64)
	return id, false, err == nil
}

var (
	errBadVersion    = errors.New(`"jsonrpc" is not "2.0"`)
	errResultAndErr  = errors.New("reply has both result and error")
	errNoResultOrErr = errors.New("reply has neither result nor error")
	errBadErrorObj   = errors.New("reply error is not a JSON-RPC error object")
	errIDType        = errors.New("reply id is a string; the request's id was a number")
)

// checkReply validates a reply and returns its result or its error object.
func (m *wireMessage) checkReply() (json.RawMessage, *RPCError, error) {
	if string(m.JSONRPC) != `"2.0"` {
		return nil, nil, errBadVersion
	}
	hasResult, hasError := m.Result != nil, m.Error != nil && !isNull(m.Error)
	switch {
	case hasResult && hasError:
		return nil, nil, errResultAndErr
	case hasResult:
		return m.Result, nil, nil
	case !hasError:
		return nil, nil, errNoResultOrErr
	}
	rpcErr, err := decodeRPCError(m.Error)
	if err != nil {
		return nil, nil, err
	}
	return nil, rpcErr, nil
}

func decodeRPCError(raw json.RawMessage) (*RPCError, error) {
	var obj struct {
		Code    *json.Number    `json:"code"`
		Message *string         `json:"message"`
		Data    json.RawMessage `json:"data"`
	}
	if raw[0] != '{' || json.Unmarshal(raw, &obj) != nil || obj.Code == nil || obj.Message == nil {
		return nil, errBadErrorObj
	}
	code, err := obj.Code.Int64()
	if err != nil {
		return nil, errBadErrorObj
	}
	e := &RPCError{Code: code, Message: *obj.Message}
	if obj.Data != nil && !isNull(obj.Data) {
		e.Data = obj.Data
	}
	return e, nil
}

// splitFrame validates one text frame and returns its messages: the frame
// itself (one message; batch false) or the elements of a batch. They are
// spans of the frame.
func splitFrame(frame []byte) (msgs [][]byte, batch bool, err error) {
	p := bytes.TrimLeft(frame, " \t\r\n")
	if !json.Valid(p) {
		return nil, false, errors.New("frame is not valid JSON")
	}
	if p[0] != '[' {
		return nil, false, nil
	}
	elems, _ := rpcscan.Array(p)
	if len(elems) == 0 {
		return nil, true, errors.New("empty batch")
	}
	return elems, true, nil
}

// decodeMessage picks the members of one message (valid JSON) by their
// exact names, without decoding the values.
func decodeMessage(raw json.RawMessage) (m wireMessage, err error) {
	if len(raw) == 0 || raw[0] != '{' {
		return m, errors.New("message is not a JSON object")
	}
	_ = rpcscan.Object(raw, func(key, value []byte) bool {
		switch string(key) {
		case "jsonrpc":
			m.JSONRPC = value
		case "id":
			m.ID = value
		case "method":
			m.Method = value
		case "params":
			m.Params = value
		case "result":
			m.Result = value
		case "error":
			m.Error = value
		}
		return true
	})
	return m, nil
}
