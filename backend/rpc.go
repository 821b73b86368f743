package backend

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"time"
)

// JSON-RPC 2.0 error codes (https://www.jsonrpc.org/specification#error_object),
// plus the code `fail` uses when the client does not pick one.
const (
	codeParseError     = -32700
	codeInvalidRequest = -32600
	codeMethodNotFound = -32601
	codeInvalidParams  = -32602
	codeFailDefault    = -32000
)

const (
	// maxBatchParallel caps the goroutines one batch runs at once. Without
	// it a single 16 MiB frame of tiny requests would start millions.
	maxBatchParallel = 256

	// maxIntDigits bounds the integers `add` sums exactly: math/big parses
	// decimal in quadratic time, and a frame may be 16 MiB long.
	maxIntDigits = 4096

	// maxSleepMS is the longest `sleep` whose duration still fits in a
	// time.Duration.
	maxSleepMS = math.MaxInt64 / int64(time.Millisecond)
)

// nullID is the id of replies to messages whose id could not be read.
var nullID = json.RawMessage("null")

// rpcError is a JSON-RPC error object. Message and data are kept as raw JSON
// so that the error a client asks `fail` for goes back byte for byte.
type rpcError struct {
	code    int64
	message json.RawMessage // a JSON string
	data    json.RawMessage // any JSON value; nil means omitted
}

func (e *rpcError) Error() string {
	return fmt.Sprintf("json-rpc error %d: %s", e.code, e.message)
}

// newError builds an error object with a standard message and, when there is
// something to add, a detail string as data.
func newError(code int64, message, detail string) *rpcError {
	e := &rpcError{code: code, message: jsonString(message)}
	if detail != "" {
		e.data = jsonString(detail)
	}
	return e
}

func errParse(detail string) *rpcError {
	return newError(codeParseError, "Parse error", detail)
}

func errInvalidRequest(detail string) *rpcError {
	return newError(codeInvalidRequest, "Invalid Request", detail)
}

func errMethodNotFound(method string) *rpcError {
	return newError(codeMethodNotFound, "Method not found", method)
}

func errInvalidParams(detail string) *rpcError {
	return newError(codeInvalidParams, "Invalid params", detail)
}

// jsonString encodes s as a JSON string.
func jsonString(s string) json.RawMessage {
	b, _ := json.Marshal(s) // a string always marshals
	return b
}

// message is one decoded frame.
type message struct {
	// err is set when the frame as a whole is unusable (not JSON, an empty
	// batch, a binary frame); it is answered alone, with id null.
	err   *rpcError
	batch bool
	calls []call
}

// call is one request, notification or invalid element of a frame.
type call struct {
	// id is the id to reply with: the client's raw bytes, or null when an
	// invalid element had no readable id. Unused for notifications.
	id     json.RawMessage
	notify bool
	// err is set when the element is not a valid request; nothing is
	// executed and err is the reply.
	err    *rpcError
	method string
	params json.RawMessage // nil when absent
	// seq is the Server's request count including this call; `counter`
	// answers with it, so the value does not depend on goroutine scheduling.
	seq uint64
}

// handleMessage turns one text frame into its reply frame, or nil when
// nothing is to be sent. The connection splits the two halves, parsing in its
// reader (so requests are counted in arrival order) and executing elsewhere;
// this is the whole path, for the fuzzer.
func (s *Server) handleMessage(ctx context.Context, frame []byte) []byte {
	return s.execute(ctx, s.parse(frame))
}

// parse decodes a frame and counts the valid requests in it.
func (s *Server) parse(frame []byte) message {
	if !json.Valid(frame) {
		return message{err: errParse("the frame is not valid JSON")}
	}
	// Valid guarantees at least one non-space byte.
	frame = bytes.TrimLeft(frame, " \t\r\n")
	if frame[0] != '[' {
		return message{calls: []call{s.parseCall(frame)}}
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(frame, &elems); err != nil {
		return message{err: errParse(err.Error())}
	}
	if len(elems) == 0 {
		return message{err: errInvalidRequest("empty batch")}
	}
	calls := make([]call, len(elems))
	for i, e := range elems {
		calls[i] = s.parseCall(e)
	}
	return message{batch: true, calls: calls}
}

// parseCall decodes one request object. raw is valid JSON without leading
// space.
func (s *Server) parseCall(raw json.RawMessage) call {
	invalid := func(id json.RawMessage, detail string) call {
		return call{id: id, err: errInvalidRequest(detail)}
	}
	if raw[0] != '{' {
		return invalid(nullID, "a request must be an object")
	}
	// A map rather than a struct: encoding/json matches struct fields
	// case-insensitively, and JSON-RPC member names are case-sensitive.
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return invalid(nullID, err.Error())
	}
	id, hasID := fields["id"]
	if hasID && !isString(id) && !isNumber(id) && string(id) != "null" {
		return invalid(nullID, `"id" must be a string, a number or null`)
	}
	replyID := nullID
	if hasID {
		replyID = id
	}
	if v := fields["jsonrpc"]; !isString(v) || decodeString(v) != "2.0" {
		return invalid(replyID, `"jsonrpc" must be "2.0"`)
	}
	method := fields["method"]
	if !isString(method) {
		return invalid(replyID, `"method" must be a string`)
	}
	params, hasParams := fields["params"]
	if hasParams && params[0] != '{' && params[0] != '[' {
		return invalid(replyID, `"params" must be an object or an array`)
	}
	return call{
		id:     replyID,
		notify: !hasID,
		method: decodeString(method),
		params: params,
		seq:    s.requests.Add(1),
	}
}

// execute runs the calls of a message and assembles the reply frame. It
// returns nil when there is nothing to send, including when ctx ended: the
// connection is going away and nobody is left to read a reply.
func (s *Server) execute(ctx context.Context, m message) []byte {
	if m.err != nil {
		return appendError(nil, nullID, m.err)
	}
	if !m.batch {
		return s.run(ctx, &m.calls[0])
	}

	replies := make([][]byte, len(m.calls))
	sem := make(chan struct{}, maxBatchParallel)
	var wg sync.WaitGroup
launch:
	for i := range m.calls {
		c := &m.calls[i]
		if c.err != nil {
			replies[i] = s.run(ctx, c) // nothing to execute, just the error
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break launch
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			replies[i] = s.run(ctx, c)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}

	var b []byte
	for _, r := range replies {
		if r == nil {
			continue // a notification
		}
		if b == nil {
			b = append(b, '[')
		} else {
			b = append(b, ',')
		}
		b = append(b, r...)
	}
	if b == nil {
		return nil // only notifications: no reply at all
	}
	return append(b, ']')
}

// run executes one call and returns its reply, or nil for notifications and
// calls cut short by ctx.
func (s *Server) run(ctx context.Context, c *call) []byte {
	if c.err != nil {
		return appendError(nil, c.id, c.err)
	}
	result, err := s.dispatch(ctx, c)
	var rerr *rpcError
	switch {
	case c.notify:
		if err != nil {
			s.log.Debug("notification failed", "method", c.method, "err", err)
		}
		return nil
	case err == nil:
		return appendResult(nil, c.id, result)
	case errors.As(err, &rerr):
		return appendError(nil, c.id, rerr)
	default:
		// Only a context error gets here: the connection is going away.
		return nil
	}
}

// dispatch runs the method of c. Errors are *rpcError, or ctx.Err() when a
// call was cut short.
func (s *Server) dispatch(ctx context.Context, c *call) (json.RawMessage, error) {
	switch c.method {
	case "echo":
		if c.params == nil {
			return nullID, nil
		}
		return c.params, nil
	case "add":
		return add(c.params)
	case "sleep":
		return s.sleepMethod(ctx, c.params)
	case "fail":
		return nil, failError(c.params)
	case "counter":
		return strconv.AppendUint(nil, c.seq, 10), nil
	case "demo_subscribe":
		return s.subscribe(ctx, c.params)
	case "demo_unsubscribe":
		return s.unsubscribe(ctx, c.params)
	default:
		return nil, errMethodNotFound(c.method)
	}
}

// add sums [a, b]. Integers are added with math/big so that ids-sized
// numbers such as 2^64 stay exact; anything else goes through float64.
func add(params json.RawMessage) (json.RawMessage, error) {
	usage := errInvalidParams("add takes [a, b], two numbers")
	var args []json.RawMessage
	if len(params) == 0 || params[0] != '[' || json.Unmarshal(params, &args) != nil ||
		len(args) != 2 || !isNumber(args[0]) || !isNumber(args[1]) {
		return nil, usage
	}
	a, b := string(args[0]), string(args[1])
	if isInteger(a) && isInteger(b) {
		if len(a) > maxIntDigits || len(b) > maxIntDigits {
			return nil, errInvalidParams(fmt.Sprintf("integers longer than %d digits are not supported", maxIntDigits))
		}
		x, okx := new(big.Int).SetString(a, 10)
		y, oky := new(big.Int).SetString(b, 10)
		if !okx || !oky {
			return nil, usage
		}
		return json.RawMessage(x.Add(x, y).String()), nil
	}
	x, errx := strconv.ParseFloat(a, 64)
	y, erry := strconv.ParseFloat(b, 64)
	sum := x + y
	// ParseFloat reports overflow as ±Inf with ErrRange; the sum catches it.
	if (errx != nil && !errors.Is(errx, strconv.ErrRange)) || (erry != nil && !errors.Is(erry, strconv.ErrRange)) ||
		math.IsInf(sum, 0) || math.IsNaN(sum) {
		return nil, errInvalidParams("the sum does not fit in a float64")
	}
	out, err := json.Marshal(sum)
	if err != nil {
		return nil, errInvalidParams(err.Error())
	}
	return out, nil
}

func (s *Server) sleepMethod(ctx context.Context, params json.RawMessage) (json.RawMessage, error) {
	ms, err := sleepParams(params)
	if err != nil {
		return nil, err
	}
	if err := s.sleep(ctx, time.Duration(ms)*time.Millisecond); err != nil {
		return nil, err
	}
	return fmt.Appendf(nil, `{"slept_ms":%d}`, ms), nil
}

// sleepParams reads N from {"ms": N} or [N].
func sleepParams(params json.RawMessage) (int64, error) {
	var n json.RawMessage
	switch {
	case len(params) > 0 && params[0] == '{':
		var p map[string]json.RawMessage
		if json.Unmarshal(params, &p) == nil {
			n = p["ms"]
		}
	case len(params) > 0 && params[0] == '[':
		var p []json.RawMessage
		if json.Unmarshal(params, &p) == nil && len(p) == 1 {
			n = p[0]
		}
	}
	if n == nil {
		return 0, errInvalidParams(`sleep takes {"ms": N} or [N]`)
	}
	ms, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || ms < 0 || ms > maxSleepMS {
		return 0, errInvalidParams(fmt.Sprintf("ms must be an integer from 0 to %d", maxSleepMS))
	}
	return ms, nil
}

// sleepCtx waits for d or until ctx ends, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// failError builds the error object `fail` was asked for.
func failError(params json.RawMessage) error {
	e := &rpcError{code: codeFailDefault, message: json.RawMessage(`"fail"`)}
	if params == nil {
		return e
	}
	var p map[string]json.RawMessage
	if params[0] != '{' || json.Unmarshal(params, &p) != nil {
		return errInvalidParams(`fail takes {"code": C, "message": M, "data": D}, all optional`)
	}
	if c, ok := p["code"]; ok {
		code, err := strconv.ParseInt(string(c), 10, 64)
		if err != nil {
			return errInvalidParams("code must be an integer")
		}
		e.code = code
	}
	if m, ok := p["message"]; ok {
		if !isString(m) {
			return errInvalidParams("message must be a string")
		}
		e.message = m
	}
	if d, ok := p["data"]; ok {
		e.data = d
	}
	return e
}

// The JSON helpers below take raw values cut out of a document that
// json.Valid accepted, so the first byte tells the type.

func isString(v json.RawMessage) bool { return len(v) > 0 && v[0] == '"' }

func isNumber(v json.RawMessage) bool {
	return len(v) > 0 && (v[0] == '-' || '0' <= v[0] && v[0] <= '9')
}

// isInteger reports whether a JSON number is written without fraction or
// exponent.
func isInteger(n string) bool { return !strings.ContainsAny(n, ".eE") }

func decodeString(v json.RawMessage) string {
	var s string
	_ = json.Unmarshal(v, &s) // v is a valid JSON string
	return s
}

// The replies are assembled by hand rather than with json.Marshal, which
// compacts json.RawMessage and escapes '<', '>' and '&' in it: ids and echoed
// params must go back byte for byte.

func appendResult(b []byte, id, result json.RawMessage) []byte {
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"result":`...)
	b = append(b, result...)
	return append(b, '}')
}

func appendError(b []byte, id json.RawMessage, e *rpcError) []byte {
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"error":{"code":`...)
	b = strconv.AppendInt(b, e.code, 10)
	b = append(b, `,"message":`...)
	b = append(b, e.message...)
	if e.data != nil {
		b = append(b, `,"data":`...)
		b = append(b, e.data...)
	}
	return append(b, "}}"...)
}

// tickMessage is the notification sent to every client every Options.Tick.
func tickMessage(seq uint64, t time.Time) []byte {
	b := []byte(`{"jsonrpc":"2.0","method":"tick","params":{"seq":`)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"time":"`...)
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}}`...)
}
