package bridge

import (
	"errors"
	"fmt"

	"github.com/wsbridge/wsbridge/jsonrpc"
)

// Code classifies why a call failed. Package server maps each Code to a gRPC
// status code, an HTTP status and a JSON-RPC error code in one table.
type Code int

// The codes a Bridge returns. The zero value is not used.
const (
	_ Code = iota
	// CodeUnavailable: no backend connection could be used and the request
	// was never written, so retrying is safe.
	CodeUnavailable
	// CodeReplyLost: the request was written, then the connection broke
	// before the reply came. The backend may have run the call.
	CodeReplyLost
	// CodeDraining: the gateway is shutting down and takes no new calls.
	CodeDraining
	// CodeDeadlineExceeded: the call's deadline passed.
	CodeDeadlineExceeded
	// CodeCanceled: the caller gave up.
	CodeCanceled
	// CodeOverloaded: the in-flight limit was reached.
	CodeOverloaded
	// CodeTooLarge: the encoded request is larger than the message limit
	// (nothing was sent), or the backend's reply is larger than the reply
	// limit (Options.MaxReplyBytes; it was discarded).
	CodeTooLarge
	// CodeInvalidArgument: the method or params cannot be sent as JSON-RPC.
	CodeInvalidArgument
	// CodeMalformedReply: the backend's reply to this call was not valid
	// JSON-RPC 2.0.
	CodeMalformedReply
	// CodeBackendError: the backend replied with a JSON-RPC error object,
	// available as Error.RPC.
	CodeBackendError
	// CodePermissionDenied: the method is not allowed (Options.AllowMethods
	// and DenyMethods); nothing was sent.
	CodePermissionDenied
	// CodeUnsupported: the method cannot be served where it was called
	// (a subscription on a face that cannot push notifications); nothing
	// was sent.
	CodeUnsupported
)

var codeNames = map[Code]string{
	CodeUnavailable:      "unavailable",
	CodeReplyLost:        "reply_lost",
	CodeDraining:         "draining",
	CodeDeadlineExceeded: "deadline_exceeded",
	CodeCanceled:         "canceled",
	CodeOverloaded:       "overloaded",
	CodeTooLarge:         "too_large",
	CodeInvalidArgument:  "invalid_argument",
	CodeMalformedReply:   "malformed_reply",
	CodeBackendError:     "backend_error",
	CodePermissionDenied: "permission_denied",
	CodeUnsupported:      "unsupported",
}

// Codes lists every Code, for tables and their tests.
func Codes() []Code {
	return []Code{CodeUnavailable, CodeReplyLost, CodeDraining, CodeDeadlineExceeded,
		CodeCanceled, CodeOverloaded, CodeTooLarge, CodeInvalidArgument,
		CodeMalformedReply, CodeBackendError, CodePermissionDenied, CodeUnsupported}
}

func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("code(%d)", int(c))
}

// Error is the error type every failed call returns.
type Error struct {
	Code    Code
	Message string
	// RPC is the backend's JSON-RPC error object when Code is
	// CodeBackendError, with the backend's code, message and data as sent.
	RPC *jsonrpc.Error
	// Err is the underlying cause, if any.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// CodeOf returns the Code of err, or 0 when err is not (or does not wrap) an
// *Error.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func newError(code Code, msg string, cause error) *Error {
	return &Error{Code: code, Message: msg, Err: cause}
}
