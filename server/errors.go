package server

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/jsonpb"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// errorMapping is one row of the error table: how a failure looks on each
// face. HTTP is what grpc-gateway's HTTPStatusFromCode gives for GRPC; the
// table states it so that the whole mapping reads in one place, and a test
// checks the two agree. NoReply marks the outcome of a caller that has
// gone: JSON-RPC clients get no reply (JSONRPC is then unused).
type errorMapping struct {
	GRPC    codes.Code
	HTTP    int
	JSONRPC int64
	NoReply bool
}

// errorTable is the mapping for every gateway condition. Backend JSON-RPC
// errors (bridge.CodeBackendError) map by their own code: see backendTable.
var errorTable = map[bridge.Code]errorMapping{
	bridge.CodeUnavailable:      {GRPC: codes.Unavailable, HTTP: 503, JSONRPC: jsonrpc.CodeUnavailable},
	bridge.CodeReplyLost:        {GRPC: codes.Unavailable, HTTP: 503, JSONRPC: jsonrpc.CodeUnavailable},
	bridge.CodeDraining:         {GRPC: codes.Unavailable, HTTP: 503, JSONRPC: jsonrpc.CodeUnavailable},
	bridge.CodeDeadlineExceeded: {GRPC: codes.DeadlineExceeded, HTTP: 504, JSONRPC: jsonrpc.CodeTimeout},
	bridge.CodeCanceled:         {GRPC: codes.Canceled, HTTP: 499, NoReply: true},
	bridge.CodeOverloaded:       {GRPC: codes.ResourceExhausted, HTTP: 429, JSONRPC: jsonrpc.CodeOverloaded},
	bridge.CodeTooLarge:         {GRPC: codes.ResourceExhausted, HTTP: 429, JSONRPC: jsonrpc.CodeRequestTooLarge},
	bridge.CodeInvalidArgument:  {GRPC: codes.InvalidArgument, HTTP: 400, JSONRPC: jsonrpc.CodeInvalidRequest},
	bridge.CodeMalformedReply:   {GRPC: codes.Internal, HTTP: 500, JSONRPC: jsonrpc.CodeInternalError},
	bridge.CodePermissionDenied: {GRPC: codes.PermissionDenied, HTTP: 403, JSONRPC: jsonrpc.CodePermissionDenied},
	bridge.CodeUnsupported:      {GRPC: codes.Unimplemented, HTTP: 501, JSONRPC: jsonrpc.CodeMethodNotFound},
}

// backendTable maps the backend's JSON-RPC error codes to gRPC. Any other
// code is UNKNOWN (500), its number kept in the BackendError detail, and
// passed to JSON-RPC clients as it is (0 included). -32700 means the
// backend could not parse a request the gateway built: the gateway's
// fault, so INTERNAL.
var backendTable = map[int64]errorMapping{
	jsonrpc.CodeParseError:     {GRPC: codes.Internal, HTTP: 500, JSONRPC: jsonrpc.CodeInternalError},
	jsonrpc.CodeInvalidRequest: {GRPC: codes.InvalidArgument, HTTP: 400, JSONRPC: jsonrpc.CodeInvalidRequest},
	jsonrpc.CodeMethodNotFound: {GRPC: codes.Unimplemented, HTTP: 501, JSONRPC: jsonrpc.CodeMethodNotFound},
	jsonrpc.CodeInvalidParams:  {GRPC: codes.InvalidArgument, HTTP: 400, JSONRPC: jsonrpc.CodeInvalidParams},
	jsonrpc.CodeInternalError:  {GRPC: codes.Internal, HTTP: 500, JSONRPC: jsonrpc.CodeInternalError},
}

var backendDefault = errorMapping{GRPC: codes.Unknown, HTTP: 500}

// clientErrorMapping is the row of a request a JSON-RPC client sent that
// cannot be served (a *jsonrpc.Error: parse error, invalid request): the
// client's fault, with the JSON-RPC code it names.
func clientErrorMapping(e *jsonrpc.Error) errorMapping {
	return errorMapping{GRPC: codes.InvalidArgument, HTTP: 400, JSONRPC: e.Code}
}

var internalMapping = errorMapping{GRPC: codes.Internal, HTTP: 500, JSONRPC: jsonrpc.CodeInternalError}

// mappingFor returns the table row for err.
func mappingFor(err error) errorMapping {
	var je *jsonrpc.Error
	if errors.As(err, &je) {
		return clientErrorMapping(je)
	}
	var be *bridge.Error
	if !errors.As(err, &be) {
		return internalMapping
	}
	if be.Code == bridge.CodeBackendError && be.RPC != nil {
		if m, ok := backendTable[be.RPC.Code]; ok {
			return m
		}
		m := backendDefault
		m.JSONRPC = be.RPC.Code
		return m
	}
	if m, ok := errorTable[be.Code]; ok {
		return m
	}
	return internalMapping
}

// clientMessage is what a client reads of err. A gateway error shows its
// message, which says what happened ("backend unavailable (next dial in
// 988ms)", "backend connection lost after the request was written ..."),
// without its cause: a dial or socket error names internal addresses
// ("dial tcp 10.0.3.7:8546: connect: connection refused", "read tcp
// 127.0.0.1:54200->...: connection reset by peer"), and goes to the logs
// and the stats (last_dial_error) only. A malformed reply keeps its
// cause, which says what was wrong with the reply (not UTF-8, a binary
// frame, a bad member), not where it came from.
func clientMessage(err error) string {
	var be *bridge.Error
	if !errors.As(err, &be) || be.Code == bridge.CodeMalformedReply {
		return err.Error()
	}
	return be.Message
}

// replyDue reports whether a JSON-RPC client gets a reply for a call that
// ended with err (no reply goes to a caller that has gone).
func replyDue(err error) bool { return err == nil || !mappingFor(err).NoReply }

// rpcErrorFor maps a failure to the JSON-RPC error object a client gets, by
// the table. A backend error keeps its code (0 included), message and
// data; an UNAVAILABLE carries its reason as data.
func rpcErrorFor(err error) *jsonrpc.Error {
	var je *jsonrpc.Error
	if errors.As(err, &je) {
		return je
	}
	m := mappingFor(err)
	var be *bridge.Error
	if errors.As(err, &be) && be.RPC != nil {
		return &jsonrpc.Error{Code: m.JSONRPC, Message: be.RPC.Message, Data: be.RPC.Data}
	}
	e := &jsonrpc.Error{Code: m.JSONRPC, Message: clientMessage(err)}
	if reason := unavailableReason(err); reason != "" {
		e.Data = json.RawMessage(`{"reason":"` + reason + `"}`)
	}
	return e
}

// appendReply appends the JSON-RPC reply to one call (only for a reply
// that is due, see replyDue).
func appendReply(dst []byte, rep reply) []byte {
	if rep.err == nil {
		return jsonrpc.AppendResult(dst, rep.id, rep.result)
	}
	return jsonrpc.AppendError(dst, rep.id, rpcErrorFor(rep.err))
}

// jsonReplies encodes the replies a JSON-RPC face sends for one message:
// one reply, or a batch's as an array.
func jsonReplies(batch bool, replies []reply) []byte {
	if !batch {
		return appendReply(nil, replies[0])
	}
	elems := make([][]byte, len(replies))
	for i, rep := range replies {
		elems[i] = appendReply(nil, rep)
	}
	return jsonrpc.AppendBatch(nil, elems)
}

// grpcError turns an error into a gRPC status error. A backend JSON-RPC
// error travels as a BackendError detail (and an ErrorInfo with its code),
// so gRPC and REST clients see the backend's own code and data.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	m := mappingFor(err)
	var be *bridge.Error
	if !errors.As(err, &be) || be.RPC == nil {
		st := status.New(m.GRPC, jsonrpc.CapMessage(clientMessage(err)))
		if reason := unavailableReason(err); reason != "" {
			info := &errdetails.ErrorInfo{Reason: strings.ToUpper(reason), Domain: "wsbridge"}
			if withDetails, derr := st.WithDetails(info); derr == nil {
				st = withDetails
			}
		}
		return st.Err()
	}
	st := status.New(m.GRPC, jsonrpc.CapMessage(be.RPC.Message))
	detail := &wsbridgev1.BackendError{Code: be.RPC.Code, Message: jsonrpc.CapMessage(be.RPC.Message)}
	if len(be.RPC.Data) > 0 {
		if v, err := jsonpb.ToValue(be.RPC.Data); err == nil {
			detail.Data = v
		}
	}
	info := &errdetails.ErrorInfo{
		Reason:   "BACKEND_ERROR",
		Domain:   "wsbridge",
		Metadata: map[string]string{"code": strconv.FormatInt(be.RPC.Code, 10)},
	}
	if withDetails, derr := st.WithDetails(detail, info); derr == nil {
		st = withDetails
	}
	return st.Err()
}

// unavailableReason tells apart the gateway's UNAVAILABLE conditions, for
// clients that retry: "unavailable" (no backend connection; the request was
// never written) and "draining" (the gateway is shutting down; the call was
// never started) are safe to retry, "reply_lost" (the connection broke after
// the request was written; the backend may have run it) is not. gRPC and
// REST clients get it as a google.rpc.ErrorInfo reason (upper case),
// JSON-RPC clients as the error's data {"reason": ...}. It is "" for every
// other error.
func unavailableReason(err error) string {
	if err == errGap {
		return "gap" // a stream that went on across a backend loss: subscribe again
	}
	var be *bridge.Error
	if !errors.As(err, &be) || be.RPC != nil {
		return ""
	}
	switch be.Code {
	case bridge.CodeUnavailable, bridge.CodeReplyLost, bridge.CodeDraining:
		return be.Code.String()
	}
	return ""
}
