package server

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/typed"
	"github.com/wsbridge/wsbridge/typed/typedtest"
)

// demoProto maps a typed service onto the demo backend's methods.
const demoProto = `syntax = "proto3";
package demo.v1;
import "wsbridge/v1/options.proto";

service Demo {
  option (wsbridge.v1.jsonrpc_service) = {};
  rpc Add(AddRequest) returns (Sum) {
    option (wsbridge.v1.jsonrpc) = {params: PARAMS_SHAPE_POSITIONAL, result_field: "sum"};
  }
  rpc Echo(Payload) returns (Payload);
  rpc Fail(FailRequest) returns (Payload);
  rpc Counter(Empty) returns (Count) {
    option (wsbridge.v1.jsonrpc) = {params: PARAMS_SHAPE_NONE, result_field: "n"};
  }
  // echo's result, read into a message it does not fit.
  rpc Misfit(Payload) returns (Numbers) { option (wsbridge.v1.jsonrpc) = {method: "echo"}; }
  rpc Ticks(TicksRequest) returns (stream Tick) {
    option (wsbridge.v1.jsonrpc) = {method: "demo_subscribe", params: PARAMS_SHAPE_POSITIONAL};
  }
}

message Empty {}
message AddRequest { int64 a = 1; int64 b = 2; }
message Sum { int64 sum = 1; }
message Count { uint64 n = 1; }
message Payload { uint64 big = 1; string text = 2; bytes data = 3; repeated Payload more = 4; }
message Numbers { int64 text = 1; }
message FailRequest { int64 code = 1; string message = 2; string data = 3; }
message TicksRequest { int32 interval_ms = 1; }
message Tick { int64 seq = 1; }
`

const demoRules = `type: google.api.Service
config_version: 3
http:
  rules:
    - selector: demo.v1.Demo.Add
      post: /v1/demo/add
      body: "*"
    - selector: demo.v1.Demo.Counter
      get: /v1/demo/counter
    - selector: demo.v1.Demo.Fail
      post: /v1/demo/fail
      body: "*"
`

// typedHarness starts a gateway in front of the demo backend that serves
// demo.proto.
func typedHarness(t *testing.T, mutate ...func(*Options)) (*harness, *typed.API) {
	t.Helper()
	return typedHarnessAt(t, demoBackend(t), mutate...)
}

// typedHarnessAt is typedHarness in front of the backend at backendURL.
func typedHarnessAt(t *testing.T, backendURL string, mutate ...func(*Options)) (*harness, *typed.API) {
	t.Helper()
	set := typedtest.CompileSet(t, map[string]string{"demo/v1/demo.proto": demoProto}, []string{"../proto"}, "demo/v1/demo.proto")
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, []byte(demoRules), 0o600); err != nil {
		t.Fatal(err)
	}
	h := start(t, backendURL, func(o *Options) {
		o.DescriptorSets, o.HTTPRules = []string{set}, rules
		for _, m := range mutate {
			m(o)
		}
	})
	return h, h.srv.typed
}

// invoke calls a typed rpc with protojson text for the request.
func invoke(t *testing.T, h *harness, api *typed.API, rpc, req string) (*dynamicpb.Message, error) {
	t.Helper()
	d, err := api.Files.FindDescriptorByName(protoreflect.FullName(rpc))
	if err != nil {
		t.Fatal(err)
	}
	md := d.(protoreflect.MethodDescriptor)
	in, out := dynamicpb.NewMessage(md.Input()), dynamicpb.NewMessage(md.Output())
	if err := protojson.Unmarshal([]byte(req), in); err != nil {
		t.Fatal(err)
	}
	full := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	return out, h.conn.Invoke(ctxT(t), full, in, out)
}

func TestTypedGRPC(t *testing.T) {
	h, api := typedHarness(t)
	for _, tc := range []struct{ rpc, req, want string }{
		// 2^53 + 1: exact through the backend's big-integer add.
		{"demo.v1.Demo.Add", `{"a":"9007199254740992","b":"1"}`, `{"sum":"9007199254740993"}`},
		{"demo.v1.Demo.Echo", `{"big":"18446744073709551615","text":"é","data":"AQI=","more":[{"text":"x"}]}`,
			`{"big":"18446744073709551615","data":"AQI=","more":[{"text":"x"}],"text":"é"}`},
		{"demo.v1.Demo.Echo", `{}`, `{}`},
	} {
		resp, err := invoke(t, h, api, tc.rpc, tc.req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.rpc, tc.req, err)
		}
		if got := jsonOf(t, resp); got != tc.want {
			t.Errorf("%s %s: got %s, want %s", tc.rpc, tc.req, got, tc.want)
		}
	}
	// A backend error: the code table, with the BackendError detail.
	_, err := invoke(t, h, api, "demo.v1.Demo.Fail", `{"code":"-32602","message":"bad params","data":"why"}`)
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || st.Message() != "bad params" {
		t.Fatalf("Fail: %v", err)
	}
	var be *wsbridgev1.BackendError
	for _, d := range st.Details() {
		if x, ok := d.(*wsbridgev1.BackendError); ok {
			be = x
		}
	}
	if be == nil || be.Code != -32602 || be.Data.GetStringValue() != "why" {
		t.Fatalf("Fail details: %v", st.Details())
	}
	// A result that does not fit fails that call alone, INTERNAL, counted.
	_, err = invoke(t, h, api, "demo.v1.Demo.Misfit", `{"text":"not a number"}`)
	if st := status.Convert(err); st.Code() != codes.Internal || !strings.Contains(st.Message(), "does not fit demo.v1.Numbers") ||
		!strings.Contains(st.Message(), "result.text") {
		t.Fatalf("Misfit: %v", err)
	}
	if resp, err := invoke(t, h, api, "demo.v1.Demo.Counter", `{}`); err != nil || jsonOf(t, resp) == `{}` {
		t.Fatalf("Counter after the misfit: %v %v", resp, err)
	}
	st2 := h.srv.Bridge().Stats()
	if st2.InFlight != 0 {
		t.Fatalf("in flight %d", st2.InFlight)
	}
	stats, err := h.stats.GetStats(ctxT(t), &wsbridgev1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if stats.ErrorsByReason["malformed_reply"] != 1 || stats.ErrorsByReason["backend_error"] != 1 || stats.GrpcCalls != 6 {
		t.Fatalf("errors by reason %v, gRPC calls %d", stats.ErrorsByReason, stats.GrpcCalls)
	}
	code, body := httpDo(t, http.MethodGet, h.base+"/metrics", "", nil)
	if code != 200 || !strings.Contains(body, `face="grpc-typed"`) {
		t.Fatalf("metrics without the typed face (%d)", code)
	}
}

// Server reflection lists the typed service and describes it, so grpcurl
// needs no proto files.
func TestTypedReflection(t *testing.T) {
	h, _ := typedHarness(t)
	stream, err := reflectionv1.NewServerReflectionClient(h.conn).ServerReflectionInfo(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	ask := func(req *reflectionv1.ServerReflectionRequest) *reflectionv1.ServerReflectionResponse {
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	list := ask(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}})
	var names []string
	for _, s := range list.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), "demo.v1.Demo") || !strings.Contains(strings.Join(names, " "), "wsbridge.v1.BridgeService") {
		t.Fatalf("services %v", names)
	}
	resp := ask(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "demo.v1.Demo"}})
	var found bool
	for _, b := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		var fdp descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(b, &fdp); err != nil {
			t.Fatal(err)
		}
		if fdp.GetName() == "demo/v1/demo.proto" && len(fdp.GetService()) == 1 && len(fdp.GetService()[0].GetMethod()) == 6 {
			found = true
		}
	}
	if !found {
		t.Fatalf("no demo/v1/demo.proto in %v", resp)
	}
}

// A server-streaming rpc is a backend subscription: typed messages flow,
// and when the client leaves the subscription is released.
func TestTypedStream(t *testing.T) {
	h, api := typedHarness(t)
	d, _ := api.Files.FindDescriptorByName("demo.v1.Demo.Ticks")
	md := d.(protoreflect.MethodDescriptor)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/demo.v1.Demo/Ticks")
	if err != nil {
		t.Fatal(err)
	}
	req := dynamicpb.NewMessage(md.Input())
	_ = protojson.Unmarshal([]byte(`{"intervalMs":5}`), req)
	if err := stream.SendMsg(req); err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	var last int64
	for range 3 {
		tick := dynamicpb.NewMessage(md.Output())
		if err := stream.RecvMsg(tick); err != nil {
			t.Fatal(err)
		}
		seq := tick.Get(md.Output().Fields().ByName("seq")).Int()
		if seq <= last {
			t.Fatalf("seq %d after %d", seq, last)
		}
		last = seq
	}
	if n := h.srv.Bridge().Stats().Subscriptions; n != 1 {
		t.Fatalf("%d backend subscriptions while streaming", n)
	}
	cancel()
	bridgetest.Eventually(t, "the subscription to be released", func() bool { return h.srv.Bridge().Stats().Subscriptions == 0 })
}

// REST (rules from a gRPC API configuration YAML) and Connect's unary JSON
// protocol reach the same typed rpcs, with grpc-gateway's error JSON.
func TestTypedRESTAndConnect(t *testing.T) {
	h, _ := typedHarness(t)
	jsonHeader := http.Header{"Content-Type": {"application/json"}}
	connectHeader := http.Header{"Content-Type": {"application/json"}, "Connect-Protocol-Version": {"1"}}
	for _, tc := range []struct {
		method, path, body string
		header             http.Header
		code               int
		want               string
	}{
		{http.MethodPost, "/v1/demo/add", `{"a":"9007199254740992","b":1}`, jsonHeader, 200, `"sum":"9007199254740993"`},
		{http.MethodGet, "/v1/demo/counter", ``, nil, 200, `"n":`},
		{http.MethodPost, "/v1/demo/fail", `{"code":-32601,"message":"nope"}`, jsonHeader, 501, `"message":"nope"`},
		{http.MethodPost, "/demo.v1.Demo/Add", `{"a":2,"b":3}`, connectHeader, 200, `{"sum":"5"}`},
		{http.MethodPost, "/demo.v1.Demo/Fail", `{"code":-32000,"message":"down"}`, connectHeader, 500, `"code":"unknown","message":"down"`},
		// A cross-site form post is refused, as on wsbridge.v1's routes.
		{http.MethodPost, "/v1/demo/add", `a=1`, http.Header{"Content-Type": {"text/plain"}}, 415, `Content-Type must be application/json`},
		// wsbridge.v1's own REST routes still work beside them.
		{http.MethodPost, "/v1/call/add", `[1,2]`, jsonHeader, 200, `{"result":3}`},
	} {
		req, _ := http.NewRequestWithContext(ctxT(t), tc.method, h.base+tc.path, strings.NewReader(tc.body))
		for k, v := range tc.header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.want) {
			t.Errorf("%s %s %s: %d %s, want %d with %s", tc.method, tc.path, tc.body, resp.StatusCode, body, tc.code, tc.want)
		}
	}
}

// A descriptor set whose mapping is wrong stops the gateway at start with
// the rpc named, and leaves nothing running.
func TestTypedBadDescriptorSetFailsAtStart(t *testing.T) {
	bad := strings.Replace(demoProto, `method: "demo_subscribe"`, `method: "demo_ticks"`, 1)
	set := typedtest.CompileSet(t, map[string]string{"demo/v1/demo.proto": bad}, []string{"../proto"}, "demo/v1/demo.proto")
	_, err := New(Options{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Bridge: bridge.Options{URL: demoBackend(t)}, DescriptorSets: []string{set}})
	if err == nil || !strings.Contains(err.Error(), "rpc demo.v1.Demo.Ticks") || !strings.Contains(err.Error(), "server-streaming") {
		t.Fatalf("New: %v", err)
	}
}

// The deny list and the bearer token hold for typed rpcs on every
// protocol, as for Call.
func TestTypedObeysDenyListAndAuth(t *testing.T) {
	tf := tokenAuth(t, "s3cret")
	h, api := typedHarness(t, func(o *Options) { o.Auth = tf; o.Bridge.DenyMethods = []string{"add"} })
	call := func(ctx context.Context, name string) error {
		d, _ := api.Files.FindDescriptorByName(protoreflect.FullName("demo.v1.Demo." + name))
		md := d.(protoreflect.MethodDescriptor)
		return h.conn.Invoke(ctx, "/demo.v1.Demo/"+name, dynamicpb.NewMessage(md.Input()), dynamicpb.NewMessage(md.Output()))
	}
	if err := call(ctxT(t), "Counter"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Counter without a token: %v", err)
	}
	if err := call(withToken(ctxT(t), "s3cret"), "Counter"); err != nil {
		t.Fatalf("Counter with the token: %v", err)
	}
	if err := call(withToken(ctxT(t), "s3cret"), "Add"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Add, denied: %v", err)
	}
	connect := http.Header{"Content-Type": {"application/json"}, "Connect-Protocol-Version": {"1"}}
	if code, body := httpDo(t, http.MethodPost, h.base+"/demo.v1.Demo/Counter", `{}`, connect); code != http.StatusUnauthorized {
		t.Fatalf("Connect Counter without a token: %d %s", code, body)
	}
	connect.Set("Authorization", "Bearer s3cret")
	if code, body := httpDo(t, http.MethodPost, h.base+"/demo.v1.Demo/Add", `{"a":1,"b":2}`, connect); code != http.StatusForbidden {
		t.Fatalf("Connect Add, denied: %d %s", code, body)
	}
	if code, body := httpDo(t, http.MethodGet, h.base+"/v1/demo/counter", ``, http.Header{"Authorization": {"Bearer s3cret"}}); code != 200 {
		t.Fatalf("REST counter with the token: %d %s", code, body)
	}
}
