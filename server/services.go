package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/jsonpb"
)

// WaitForReadyMetadata is the request metadata (REST: the header
// Wsbridge-Wait-For-Ready) that asks a call to wait for the backend, like
// CallRequest.wait_for_ready. gRPC's own wait-for-ready option is not sent
// on the wire; a client interceptor can translate it into this key.
const WaitForReadyMetadata = "wsbridge-wait-for-ready"

// bridgeService implements wsbridge.v1.BridgeService on the Bridge.
type bridgeService struct {
	wsbridgev1.UnimplementedBridgeServiceServer
	s *Server
}

func (svc bridgeService) Call(ctx context.Context, req *wsbridgev1.CallRequest) (*wsbridgev1.CallResponse, error) {
	s := svc.s
	f := faceOf(ctx)
	params, err := encodeParams(req.GetParams())
	var co bridge.CallOptions
	if err == nil {
		co, err = callOptions(ctx, req.GetTimeout(), req.GetWaitForReady())
	}
	if err != nil {
		s.observeRefusal(ctx, f, req.GetMethod(), err)
		return nil, grpcError(err)
	}
	var v *structpb.Value
	err = s.unary(ctx, f, req.GetMethod(), params, co, func(raw json.RawMessage) (err error) {
		v, err = resultValue(raw)
		return err
	})
	if err != nil {
		return nil, grpcError(err)
	}
	return &wsbridgev1.CallResponse{Result: v}, nil
}

func (svc bridgeService) Notify(ctx context.Context, req *wsbridgev1.NotifyRequest) (*wsbridgev1.NotifyResponse, error) {
	s := svc.s
	f := faceOf(ctx)
	params, err := encodeParams(req.GetParams())
	var co bridge.CallOptions
	if err == nil {
		co, err = callOptions(ctx, nil, false)
	}
	if err != nil {
		s.observeRefusal(ctx, f, req.GetMethod(), err)
		return nil, grpcError(err)
	}
	if err := s.unaryNotify(ctx, f, req.GetMethod(), params, co); err != nil {
		return nil, grpcError(err)
	}
	return &wsbridgev1.NotifyResponse{}, nil
}

func invalid(format string, args ...any) error {
	return &bridge.Error{Code: bridge.CodeInvalidArgument, Message: fmt.Sprintf(format, args...)}
}

// paramBufs are scratch buffers for encodeParams: the encoding grows one,
// and the result is copied out at its exact size.
var paramBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// encodeParams turns the request's params into JSON-RPC params: absent or
// null means none; otherwise an object or an array.
func encodeParams(v *structpb.Value) (json.RawMessage, error) {
	switch v.GetKind().(type) {
	case nil, *structpb.Value_NullValue:
		return nil, nil
	case *structpb.Value_StructValue, *structpb.Value_ListValue:
		buf := paramBufs.Get().(*[]byte)
		defer paramBufs.Put(buf)
		b, err := jsonpb.AppendValue((*buf)[:0], v)
		if err != nil {
			return nil, invalid("params: %v", err)
		}
		*buf = b
		return bytes.Clone(b), nil
	}
	return nil, invalid("params must be an object or an array (JSON-RPC 2.0 allows no other)")
}

// callOptions gathers the call's own timeout and wait-for-ready choice. The
// context's deadline (gRPC deadline, REST Grpc-Timeout) is applied by the
// Bridge together with its CallTimeout; the earliest wins.
func callOptions(ctx context.Context, timeout *durationpb.Duration, waitForReady bool) (bridge.CallOptions, error) {
	var co bridge.CallOptions
	if timeout != nil {
		if err := timeout.CheckValid(); err != nil {
			return co, invalid("timeout: %v", err)
		}
		if co.Timeout = timeout.AsDuration(); co.Timeout <= 0 {
			return co, invalid("timeout must be positive, got %v", co.Timeout)
		}
	}
	co.WaitForReady = waitForReady
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, v := range md.Get(WaitForReadyMetadata) {
			if strings.EqualFold(v, "true") || v == "1" {
				co.WaitForReady = true
			}
		}
	}
	return co, nil
}

// statsService implements wsbridge.v1.StatsService.
type statsService struct {
	wsbridgev1.UnimplementedStatsServiceServer
	s *Server
}

func (svc statsService) GetStats(context.Context, *wsbridgev1.GetStatsRequest) (*wsbridgev1.Stats, error) {
	return svc.s.snapshot(), nil
}

// resultValue turns a backend result into a Value: an error for the caller
// (INTERNAL) when it cannot be one. Results are valid JSON: parts of
// backend frames the bridge has checked, or the gateway's own.
func resultValue(raw json.RawMessage) (*structpb.Value, error) {
	v, err := jsonpb.ToValueOfValid(raw)
	if err != nil {
		return nil, &bridge.Error{Code: bridge.CodeMalformedReply, Message: "backend result cannot be represented as a google.protobuf.Value", Err: err}
	}
	return v, nil
}
