package server

import (
	"errors"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/jsonpb"
)

// Gateway conditions reported to JSON-RPC clients, with proxyd's numbers.
const (
	RPCUnavailable      = -32010
	RPCOverloaded       = -32012
	RPCTimeout          = -32015
	RPCRequestTooLarge  = -32021
	RPCPermissionDenied = -32001
	rpcNoReply          = 0 // the caller is gone; nothing is sent
	maxErrorMessageSize = 1024
)

// errorMapping is one row of the error table: how a bridge failure looks on
// each face. HTTP is what grpc-gateway's HTTPStatusFromCode gives for GRPC;
// the table states it so that the whole mapping reads in one place, and a
// test checks the two agree.
type errorMapping struct {
	GRPC    codes.Code
	HTTP    int
	JSONRPC int
}

// errorTable is the mapping for every gateway condition. Backend JSON-RPC
// errors (bridge.CodeBackendError) map by their own code: see backendTable.
var errorTable = map[bridge.Code]errorMapping{
	bridge.CodeUnavailable:      {codes.Unavailable, 503, RPCUnavailable},
	bridge.CodeReplyLost:        {codes.Unavailable, 503, RPCUnavailable},
	bridge.CodeDraining:         {codes.Unavailable, 503, RPCUnavailable},
	bridge.CodeDeadlineExceeded: {codes.DeadlineExceeded, 504, RPCTimeout},
	bridge.CodeCanceled:         {codes.Canceled, 499, rpcNoReply},
	bridge.CodeOverloaded:       {codes.ResourceExhausted, 429, RPCOverloaded},
	bridge.CodeTooLarge:         {codes.ResourceExhausted, 429, RPCRequestTooLarge},
	bridge.CodeInvalidArgument:  {codes.InvalidArgument, 400, bridge.RPCInvalidRequest},
	bridge.CodeMalformedReply:   {codes.Internal, 500, bridge.RPCInternalError},
	bridge.CodePermissionDenied: {codes.PermissionDenied, 403, RPCPermissionDenied},
}

// backendTable maps the backend's JSON-RPC error codes to gRPC. Any other
// code is UNKNOWN (500), its number kept in the BackendError detail.
// -32700 means the backend could not parse a request the gateway built:
// the gateway's fault, so INTERNAL.
var backendTable = map[int64]errorMapping{
	bridge.RPCParseError:     {codes.Internal, 500, bridge.RPCInternalError},
	bridge.RPCInvalidRequest: {codes.InvalidArgument, 400, bridge.RPCInvalidRequest},
	bridge.RPCMethodNotFound: {codes.Unimplemented, 501, bridge.RPCMethodNotFound},
	bridge.RPCInvalidParams:  {codes.InvalidArgument, 400, bridge.RPCInvalidParams},
	bridge.RPCInternalError:  {codes.Internal, 500, bridge.RPCInternalError},
}

var backendDefault = errorMapping{codes.Unknown, 500, 0} // JSON-RPC: passed through

// mappingFor returns the table row for err.
func mappingFor(err error) errorMapping {
	var be *bridge.Error
	if !errors.As(err, &be) {
		return errorMapping{codes.Internal, 500, bridge.RPCInternalError}
	}
	if be.Code == bridge.CodeBackendError && be.RPC != nil {
		if m, ok := backendTable[be.RPC.Code]; ok {
			return m
		}
		m := backendDefault
		m.JSONRPC = int(be.RPC.Code)
		return m
	}
	if m, ok := errorTable[be.Code]; ok {
		return m
	}
	return errorMapping{codes.Internal, 500, bridge.RPCInternalError}
}

// grpcError turns a bridge error into a gRPC status error. A backend
// JSON-RPC error travels as a BackendError detail (and an ErrorInfo with its
// code), so gRPC and REST clients see the backend's own code and data.
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
		st := status.New(m.GRPC, capMessage(err.Error()))
		if reason := unavailableReason(err); reason != "" {
			info := &errdetails.ErrorInfo{Reason: strings.ToUpper(reason), Domain: "wsbridge"}
			if withDetails, derr := st.WithDetails(info); derr == nil {
				st = withDetails
			}
		}
		return st.Err()
	}
	st := status.New(m.GRPC, capMessage(be.RPC.Message))
	detail := &wsbridgev1.BackendError{Code: be.RPC.Code, Message: capMessage(be.RPC.Message)}
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

// capMessage keeps error messages to 1 KiB of valid UTF-8: a backend's
// message is not trusted to be short, and gRPC requires UTF-8.
func capMessage(s string) string {
	if len(s) > maxErrorMessageSize {
		s = s[:maxErrorMessageSize] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
