package server

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// The table must cover every bridge code and agree with grpc-gateway's
// HTTP mapping, row by row.
func TestErrorTableIsCompleteAndConsistent(t *testing.T) {
	for _, code := range bridge.Codes() {
		if code == bridge.CodeBackendError {
			continue
		}
		m, ok := errorTable[code]
		if !ok {
			t.Errorf("bridge code %v has no row", code)
			continue
		}
		if got := runtime.HTTPStatusFromCode(m.GRPC); got != m.HTTP {
			t.Errorf("%v: table says HTTP %d, grpc-gateway maps %v to %d", code, m.HTTP, m.GRPC, got)
		}
		err := grpcError(&bridge.Error{Code: code, Message: "m"})
		if status.Code(err) != m.GRPC {
			t.Errorf("%v: grpcError gives %v, table says %v", code, status.Code(err), m.GRPC)
		}
	}
	for rpcCode, m := range backendTable {
		if got := runtime.HTTPStatusFromCode(m.GRPC); got != m.HTTP {
			t.Errorf("backend %d: table says HTTP %d, grpc-gateway maps %v to %d", rpcCode, m.HTTP, m.GRPC, got)
		}
	}
	if got := runtime.HTTPStatusFromCode(backendDefault.GRPC); got != backendDefault.HTTP {
		t.Errorf("backend default: HTTP %d vs %d", backendDefault.HTTP, got)
	}
}

func TestBackendErrorsKeepTheirCode(t *testing.T) {
	for _, tc := range []struct {
		rpc  int64
		want codes.Code
	}{
		{-32601, codes.Unimplemented},
		{-32600, codes.InvalidArgument},
		{-32602, codes.InvalidArgument},
		{-32603, codes.Internal},
		{-32700, codes.Internal},
		{-32000, codes.Unknown},
		{42, codes.Unknown},
		{0, codes.Unknown},
	} {
		berr := &bridge.Error{Code: bridge.CodeBackendError, RPC: &jsonrpc.Error{Code: tc.rpc, Message: "msg", Data: []byte(`{"k":[1]}`)}}
		st := status.Convert(grpcError(berr))
		if st.Code() != tc.want || st.Message() != "msg" {
			t.Errorf("%d -> %v %q, want %v", tc.rpc, st.Code(), st.Message(), tc.want)
		}
		var found bool
		for _, d := range st.Details() {
			if be, ok := d.(*wsbridgev1.BackendError); ok {
				found = true
				if be.Code != tc.rpc || be.Message != "msg" || be.Data.GetStructValue().GetFields()["k"].GetListValue().GetValues()[0].GetNumberValue() != 1 {
					t.Errorf("detail %v", be)
				}
			}
		}
		if !found {
			t.Errorf("%d: no BackendError detail", tc.rpc)
		}
		if m := mappingFor(berr); m.NoReply || (m.JSONRPC == 0) != (tc.rpc == 0) {
			t.Errorf("%d: JSON-RPC code %d", tc.rpc, m.JSONRPC)
		}
	}
}

// The three UNAVAILABLE conditions carry a reason that tells a retrying
// client whether the call can have run: as an ErrorInfo on gRPC (and so
// REST) and as data.reason on JSON-RPC; other errors carry none.
func TestUnavailableReasons(t *testing.T) {
	for code, want := range map[bridge.Code]string{bridge.CodeUnavailable: "unavailable", bridge.CodeReplyLost: "reply_lost",
		bridge.CodeDraining: "draining", bridge.CodeDeadlineExceeded: "", bridge.CodeOverloaded: ""} {
		err := &bridge.Error{Code: code, Message: "m"}
		if got := strings.ToLower(errorInfoReason(grpcError(err))); got != want {
			t.Errorf("%v: gRPC ErrorInfo reason %q, want %q", code, got, want)
		}
		e := rpcErrorFor(err)
		var data struct{ Reason string }
		if len(e.Data) > 0 {
			if err := json.Unmarshal(e.Data, &data); err != nil {
				t.Fatal(err)
			}
		}
		if data.Reason != want {
			t.Errorf("%v: JSON-RPC data %s, want reason %q", code, e.Data, want)
		}
	}
}

// errorInfoReason is the reason of a gRPC error's wsbridge ErrorInfo.
func errorInfoReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == "wsbridge" {
			return info.Reason
		}
	}
	return ""
}

// Every backend error code reaches a JSON-RPC client as it was sent, 0
// included (it once meant "no reply"); only a caller that has gone gets
// no reply.
func TestEveryBackendCodeIsReplied(t *testing.T) {
	for _, code := range []int64{0, 1, -1, -32000, -32601, 1 << 40} {
		err := &bridge.Error{Code: bridge.CodeBackendError, RPC: &jsonrpc.Error{Code: code, Message: "m"}}
		if !replyDue(err) {
			t.Fatalf("code %d: no reply due", code)
		}
		want := code
		if code == jsonrpc.CodeParseError {
			want = jsonrpc.CodeInternalError
		}
		if got := rpcErrorFor(err).Code; got != want {
			t.Fatalf("code %d became %d", code, got)
		}
	}
	if replyDue(&bridge.Error{Code: bridge.CodeCanceled}) {
		t.Fatal("a cancelled caller gets a reply")
	}
}
