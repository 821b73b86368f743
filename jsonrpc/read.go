package jsonrpc

// Everything in this package that reads JSON text, on internal/jsonscan.

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"

	"github.com/wsbridge/wsbridge/internal/jsonscan"
)

// ParseRequests reads one client message (a WebSocket message or an HTTP
// body): a request, a notification or a batch. Text that is not JSON, or
// not UTF-8, yields one request with ErrParse or ErrNotUTF8 (reply to
// null); an empty batch one with ErrEmptyBatch, not in a batch. The
// spans in the requests point into data.
//
// Invalid UTF-8 is refused here, whatever the transport: passed on in a
// backend text frame it would break the one socket every client shares
// (RFC 6455 peers close it with 1007).
func ParseRequests(data []byte) (reqs []Request, batch bool) {
	data = bytes.TrimLeft(data, " \t\r\n")
	if !utf8.Valid(data) {
		return []Request{{Err: ErrNotUTF8}}, false
	}
	if !json.Valid(data) {
		return []Request{{Err: ErrParse}}, false
	}
	batch = eachMessage(data, func(raw []byte) { reqs = append(reqs, parseRequest(raw)) })
	if len(reqs) == 0 {
		return []Request{{Err: ErrEmptyBatch}}, false
	}
	return reqs, batch
}

// Why ParseMessages refuses a frame or a message.
var (
	errFrameNotJSON = errors.New("frame is not valid JSON")
	errEmptyBatch   = errors.New("empty batch")
	errNotObject    = errors.New("message is not a JSON object")
)

// ParseMessages reads one text frame from the backend (valid UTF-8, as
// RFC 6455 requires of text frames: the caller checks): a message or a
// batch of them, as spans of the frame, appended to dst. dst may be nil; a
// reader that passes the same buffer for each frame allocates nothing.
// An element of a batch that is not an object comes back with Err set.
// The frame as a whole is refused (err) when it is not JSON or is an empty
// batch; BrokenFrameIDs then names the calls it may have been a reply to.
func ParseMessages(dst []Message, frame []byte) (msgs []Message, batch bool, err error) {
	data := bytes.TrimLeft(frame, " \t\r\n")
	if !json.Valid(data) {
		return dst, false, errFrameNotJSON
	}
	msgs = dst
	batch = eachMessage(data, func(raw []byte) { msgs = append(msgs, parseMessage(raw)) })
	if len(msgs) == len(dst) {
		return dst, true, errEmptyBatch
	}
	return msgs, batch, nil
}

// eachMessage calls fn with data (valid JSON that starts with its first
// token) or, when it is a batch, with each of its elements, and reports
// whether it was a batch.
func eachMessage(data []byte, fn func(raw []byte)) (batch bool) {
	if data[0] != '[' {
		fn(data)
		return false
	}
	jsonscan.Array(data, 0, fn)
	return true
}

// parseMessage picks the members of one message (valid JSON) by their
// exact names, without decoding the values.
func parseMessage(raw []byte) Message {
	m := Message{Raw: raw}
	if len(raw) == 0 || raw[0] != '{' {
		m.Err = errNotObject
		return m
	}
	jsonscan.Object(raw, 0, func(name, value []byte) {
		switch string(name) {
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
	})
	return m
}

// parseRequest checks one request object (valid JSON).
func parseRequest(raw []byte) Request {
	m := parseMessage(raw)
	if m.Err != nil {
		return Request{Err: ErrNotObject}
	}
	var r Request
	if m.ID != nil {
		if !isScalarID(m.ID) && !isNull(m.ID) {
			return Request{Err: ErrID}
		}
		r.ID = m.ID
	}
	fail := func(e *Error) Request { return Request{ID: r.ID, Err: e} }
	if v, ok := String(m.JSONRPC); !ok || v != "2.0" {
		return fail(ErrVersion)
	}
	method, ok := String(m.Method)
	if !ok || method == "" {
		return fail(ErrMethod)
	}
	r.Method = method
	if len(m.Params) > 0 && !isNull(m.Params) {
		if m.Params[0] != '{' && m.Params[0] != '[' {
			return fail(ErrParams)
		}
		r.Params = m.Params
	}
	return r
}

// isScalarID reports whether v is an id that names something: a string or
// a number.
func isScalarID(v []byte) bool {
	return len(v) > 0 && (v[0] == '"' || v[0] == '-' || (v[0] >= '0' && v[0] <= '9'))
}

// String decodes a JSON string value (a valid span; see jsonscan.Unquote);
// ok is false for any other kind of value.
func String(v []byte) (string, bool) { return jsonscan.Unquote(v) }

// BrokenFrameIDs returns the ids of the replies in a frame that cannot be
// routed as it is (cut off, not JSON, not UTF-8, or sent as a binary
// frame), so that their callers can fail at once instead of waiting for
// their deadline.
//
// Only an id that is a member of a top-level message is trusted: one
// nested in a result, in params or in data is not the message's id. A
// message with a top-level "method" is a request or a notification, not
// a reply, and names no caller; so does one that holds "id" twice. A
// frame that is a batch yields the id of each element that names one, up
// to the first element that is not an object or breaks off.
// When nothing can be trusted the result is empty: no caller is blamed
// for a frame that may not be its own.
func BrokenFrameIDs(frame []byte) []json.RawMessage {
	i := jsonscan.SkipSpace(frame, 0)
	if i >= len(frame) {
		return nil
	}
	switch frame[i] {
	case '{':
		if id, _ := objectID(frame, i); id != nil {
			return []json.RawMessage{id}
		}
	case '[':
		var ids []json.RawMessage
		i = jsonscan.SkipSpace(frame, i+1)
		for i < len(frame) && frame[i] == '{' {
			id, end := objectID(frame, i)
			if id != nil {
				ids = append(ids, id)
			}
			if end < 0 {
				break
			}
			i = jsonscan.SkipSpace(frame, end)
			if i >= len(frame) || frame[i] != ',' {
				break
			}
			i = jsonscan.SkipSpace(frame, i+1)
		}
		return ids
	}
	return nil
}

// objectID scans the object starting at b[i] ('{') for its top-level id
// (nil when there is none to trust, see BrokenFrameIDs). end is the index
// just past the object, or -1 when the object is cut off or broken.
func objectID(b []byte, i int) (id json.RawMessage, end int) {
	var ids int
	var method bool
	end = jsonscan.Object(b, i, func(name, value []byte) {
		switch string(name) {
		case "id":
			ids++
			if isScalarID(value) {
				id = value
			}
		case "method":
			method = true
		}
	})
	if method || ids != 1 {
		return nil, end
	}
	return id, end
}

// Subscription notifications: a backend that has subscriptions (such as
// eth_subscribe) sends each event as a notification whose params are
// {"subscription": id, "result": event}. The helpers below read and
// rewrite such params without decoding the event, which may be large.
// Member names match exactly ("Subscription" is another member), and a
// member given twice counts as absent: which one was meant is unknown.
// params is JSON from a checked frame; on other text the helpers do not
// panic, but what they find is unspecified.

// SubscriptionID returns params.subscription when it is an id (a JSON
// string or number), as a span of params; otherwise nil.
func SubscriptionID(params json.RawMessage) json.RawMessage {
	if v := member(params, "subscription"); isScalarID(v) {
		return v
	}
	return nil
}

// WithSubscriptionID returns a copy of params with the value of its
// subscription member replaced by id (a JSON string or number), every
// other byte as it was. When SubscriptionID(params) is nil, params comes
// back as it is.
//
// A gateway that numbers subscriptions for its clients calls it on each
// notification: SubscriptionID gives the backend's id to look up, and
// WithSubscriptionID puts the client's id in its place.
func WithSubscriptionID(params, id json.RawMessage) json.RawMessage {
	old := SubscriptionID(params)
	if old == nil {
		return params
	}
	at := cap(params) - cap(old) // old is a span of params
	out := make(json.RawMessage, 0, len(params)-len(old)+len(id))
	out = append(out, params[:at]...)
	out = append(out, id...)
	return append(out, params[at+len(old):]...)
}

// SubscriptionResult returns params.result (the event), as a span of
// params; ok is false when there is none.
func SubscriptionResult(params json.RawMessage) (result json.RawMessage, ok bool) {
	result = member(params, "result")
	return result, result != nil
}

// member returns the value of the member called name of the object params,
// or nil when params is not one object, or has no such member or two.
func member(params json.RawMessage, name string) json.RawMessage {
	var value json.RawMessage
	n := 0
	end := jsonscan.Object(params, jsonscan.SkipSpace(params, 0), func(k, v []byte) {
		if string(k) == name {
			value = v
			n++
		}
	})
	if end < 0 || jsonscan.SkipSpace(params, end) != len(params) || n != 1 {
		return nil
	}
	return value
}
