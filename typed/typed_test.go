package typed

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/wsbridge/wsbridge/internal/glob"
	"github.com/wsbridge/wsbridge/typed/typedtest"
)

// compileSet compiles .proto sources (testdata/ and ../proto are on the
// import path) into a descriptor set file.
func compileSet(t testing.TB, sources map[string]string, names ...string) string {
	t.Helper()
	return typedtest.CompileSet(t, sources, []string{"testdata", "../proto"}, names...)
}

var testLoad = LoadOptions{IsSubscribe: func(m string) bool { return glob.Match("*_subscribe", m) }}

// kitchen loads testdata/kitchen.proto.
func kitchen(t testing.TB) *API {
	t.Helper()
	api, err := Load([]string{compileSet(t, nil, "kitchen.proto")}, testLoad)
	if err != nil {
		t.Fatal(err)
	}
	return api
}

func method(t testing.TB, api *API, name string) *Method {
	t.Helper()
	for _, s := range api.Services {
		for _, m := range s.Methods {
			if string(m.Desc.FullName()) == name {
				return m
			}
		}
	}
	t.Fatalf("no method %s", name)
	return nil
}

// request builds m's request from protojson text.
func request(t testing.TB, m *Method, js string) *dynamicpb.Message {
	t.Helper()
	req := m.NewRequest()
	if err := protojson.Unmarshal([]byte(js), req); err != nil {
		t.Fatal(err)
	}
	return req
}

func TestMethodNamesAndShapes(t *testing.T) {
	api := kitchen(t)
	for name, want := range map[string]string{
		"kitchen.v1.Kitchen.Echo": "k_echo", "kitchen.v1.Kitchen.Position": "k_position",
		"kitchen.v1.Kitchen.BlockNumber": "eth_blockNumber", "kitchen.v1.Kitchen.Heads": "k_subscribe", "kitchen.v1.Strict.Get": "get",
	} {
		if got := method(t, api, name).JSONRPC; got != want {
			t.Errorf("%s calls %q, want %q", name, got, want)
		}
	}
	if !method(t, api, "kitchen.v1.Kitchen.Heads").Streaming {
		t.Error("Heads is not streaming")
	}
	for in, want := range map[string]string{"GetBalance": "getBalance", "ID": "id", "URLFor": "urlFor", "x": "x", "GetHTTPRule": "getHTTPRule"} {
		if got := lowerCamel(in); got != want {
			t.Errorf("lowerCamel(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParams(t *testing.T) {
	api := kitchen(t)
	echo, pos, none, heads := method(t, api, "kitchen.v1.Kitchen.Echo"), method(t, api, "kitchen.v1.Kitchen.Position"),
		method(t, api, "kitchen.v1.Kitchen.BlockNumber"), method(t, api, "kitchen.v1.Kitchen.Heads")
	strict := method(t, api, "kitchen.v1.Strict.Get")
	for _, tc := range []struct {
		m        *Method
		req, out string
	}{
		// 64-bit integers are exact JSON numbers, unless a field says
		// otherwise; 2^53+1 survives.
		{echo, `{"i64":"9007199254740993","u64":"18446744073709551615","s64":"-5","quantity":"255"}`,
			`{"i64":9007199254740993,"u64":18446744073709551615,"s64":"-5","quantity":"0xff"}`},
		{echo, `{"data":"AQI=","hexdata":"AQI=","color":"COLOR_RED","ok":true,"d":1.5,"f":"NaN"}`,
			`{"d":1.5,"f":"NaN","ok":true,"data":"AQI=","hexdata":"0x0102","color":"COLOR_RED"}`},
		{echo, `{"inner":{"name":"a","children":[{"name":"b"}]},"list":["1","-2"],"counts":{"b":"2","a":"1"},"byNumber":{"10":{},"9":{"name":"n"}}}`,
			`{"inner":{"name":"a","children":[{"name":"b"}]},"list":[1,-2],"counts":{"a":1,"b":2},"byNumber":{"9":{"name":"n"},"10":{}}}`},
		{echo, `{"at":"2026-12-01T10:00:00Z","extra":{"k":[1,"x"]},"anyValue":null,"second":0,"maybe":""}`,
			`{"at":"2026-12-01T10:00:00Z","extra":{"k":[1,"x"]},"anyValue":null,"second":0,"maybe":""}`},
		{echo, `{}`, `{}`},
		// The service says hex for every 64-bit integer and bytes field.
		{strict, `{"i64":"-255","u64":"16","data":"AQI="}`, `{"i64":"-0xff","u64":"0x10","data":"0x0102"}`},
		// Positional: b (optional), a (no presence), c (a message). a is
		// always sent; an unset b or c is null, left out at the end.
		{pos, `{"a":"x","b":"7","c":{"name":"n"}}`, `[7,"x",{"name":"n"}]`},
		{pos, `{"b":"7"}`, `[7,""]`},
		{pos, `{"a":"x"}`, `[null,"x"]`},
		{pos, `{"c":{}}`, `[null,"",{}]`},
		{pos, `{}`, `[null,""]`},
		{none, `{}`, ``},
		{heads, `{}`, `["heads"]`},
	} {
		got, err := tc.m.Params(request(t, tc.m, tc.req))
		if err != nil {
			t.Errorf("%s %s: %v", tc.m.Desc.Name(), tc.req, err)
			continue
		}
		if string(got) != tc.out {
			t.Errorf("%s %s:\n got %s\nwant %s", tc.m.Desc.Name(), tc.req, got, tc.out)
		}
	}
}

func TestResult(t *testing.T) {
	api := kitchen(t)
	echo, pos, num := method(t, api, "kitchen.v1.Kitchen.Echo"), method(t, api, "kitchen.v1.Kitchen.Position"), method(t, api, "kitchen.v1.Kitchen.BlockNumber")
	strict := method(t, api, "kitchen.v1.Strict.Get")
	for _, tc := range []struct {
		m          *Method
		result     string
		want       string // protojson of the response; "" when an error is expected
		wantErrHas string
	}{
		// Ethereum's quantity: a hex string, exactly, into a uint64.
		{num, `"0x20000000000001"`, `{"number":"9007199254740993"}`, ""},
		{num, `9007199254740993`, `{"number":"9007199254740993"}`, ""},
		{num, `"9007199254740993"`, `{"number":"9007199254740993"}`, ""},
		{num, `1e3`, `{"number":"1000"}`, ""},
		{num, `"0x"`, "", "no hex digits"},
		{num, `-1`, "", "out of"},
		{num, `1.5`, "", "not an integer"},
		{num, `"0x10000000000000000"`, "", "not an integer"},
		{num, `{"a":1}`, "", "an object, where uint64 field number needs an integer"},
		{pos, `"text"`, `{"value":"text"}`, ""},
		{pos, `5`, "", "a number, where string field value needs a string"},
		{echo, `{"i64":"-9223372036854775808","u64":"0xffffffffffffffff","s64":-1,"quantity":"0x2a","f32":4294967295}`,
			`{"i64":"-9223372036854775808","u64":"18446744073709551615","s64":"-1","quantity":"42","f32":4294967295}`, ""},
		{echo, `{"i32":2147483648}`, "", "out of"},
		{echo, `{"data":"0x0102","hexdata":"AQI","color":1,"d":"Infinity","f":3}`, `{"f":3,"d":"Infinity","data":"AQI=","hexdata":"AQI=","color":"COLOR_RED"}`, ""},
		{echo, `{"color":"COLOR_BLUE"}`, "", "not a value of kitchen.v1.Color"},
		{echo, `{"inner":{"name":"a","children":[{"name":"b"},{}]},"list":[1,"2","0x3"],"counts":{"a":1},"byNumber":{"7":{"name":"s"}}}`,
			`{"inner":{"name":"a","children":[{"name":"b"},{}]},"list":["1","2","3"],"counts":{"a":"1"},"byNumber":{"7":{"name":"s"}}}`, ""},
		{echo, `{"at":"2026-12-01T10:00:00Z","extra":{"k":null},"anyValue":null}`, `{"at":"2026-12-01T10:00:00Z","extra":{"k":null},"anyValue":null}`, ""},
		{echo, `{"text":null,"inner":null,"list":null}`, `{}`, ""},
		{echo, `{"first":"a","second":2}`, "", "of one oneof"},
		{echo, `{"text":"a","text":"b"}`, "", "given twice"},
		{echo, `{"text":"a","i_32":1,"unknown":{"deep":[1]}}`, `{"text":"a"}`, ""},
		{echo, `{"byNumber":{"x":{}}}`, "", `key "x"`},
		{echo, `[1]`, "", "an array, where kitchen.v1.All needs an object"},
		{echo, `null`, `{}`, ""},
		{echo, `{"text":"\ud800"}`, "", "surrogate"},
		{echo, `{"text":"a"`, "", "not valid JSON"},
		{strict, `{"text":"a","unknown":1}`, "", `no field "unknown"`},
	} {
		resp, err := tc.m.Result([]byte(tc.result))
		if tc.want == "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErrHas) {
				t.Errorf("%s %s: error %v, want one with %q", tc.m.Desc.Name(), tc.result, err, tc.wantErrHas)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %s: %v", tc.m.Desc.Name(), tc.result, err)
			continue
		}
		want := tc.m.NewResponse()
		if err := protojson.Unmarshal([]byte(tc.want), want); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(resp, want) {
			got, _ := protojson.Marshal(resp)
			t.Errorf("%s %s:\n got %s\nwant %s", tc.m.Desc.Name(), tc.result, got, tc.want)
		}
	}
}

// Whatever the gateway sends as params, it reads back as a result into the
// same message: the two directions agree for every kind.
func TestParamsReadBackAsResult(t *testing.T) {
	api := kitchen(t)
	for _, name := range []string{"kitchen.v1.Kitchen.Echo", "kitchen.v1.Strict.Get"} {
		m := method(t, api, name)
		req := request(t, m, `{"i32":-1,"i64":"-9007199254740993","u64":"18446744073709551615","s64":"3","quantity":"9007199254740993",
			"f32":7,"d":-0.5,"f":"-Infinity","ok":true,"text":"é\n\"","data":"AAEC","hexdata":"/w==","color":"COLOR_RED",
			"inner":{"children":[{"name":"c"}]},"list":["0","1"],"counts":{"":"5"},"byNumber":{"-3":{}},
			"at":"1970-01-01T00:00:01.5Z","extra":{"a":{"b":[true,null]}},"anyValue":"s","second":9,"maybe":"m"}`)
		params, err := m.Params(req)
		if err != nil {
			t.Fatal(err)
		}
		back, err := m.Result(params)
		if err != nil {
			t.Fatalf("%s: %s: %v", name, params, err)
		}
		if !proto.Equal(back, req) {
			t.Errorf("%s: %s read back differently", name, params)
		}
	}
}

func TestLoadRefusesBadMappings(t *testing.T) {
	const head = "syntax = \"proto3\";\npackage bad.v1;\nimport \"wsbridge/v1/options.proto\";\nmessage E {}\nmessage M { string a = 1; int32 n = 2; }\n"
	for _, tc := range []struct{ body, want string }{
		{`service S { option (wsbridge.v1.jsonrpc_service) = {}; rpc Up(stream E) returns (E); }`, "rpc bad.v1.S.Up: client-streaming"},
		{`service S { option (wsbridge.v1.jsonrpc_service) = {}; rpc Tail(E) returns (stream E); }`, `rpc bad.v1.S.Tail: it is server-streaming, so its method "tail" must make a backend subscription`},
		{`service S { rpc Sub(E) returns (E) { option (wsbridge.v1.jsonrpc) = {method: "x_subscribe"}; } }`, "rpc bad.v1.S.Sub: its method \"x_subscribe\" makes a subscription"},
		{`service S { rpc R(M) returns (E) { option (wsbridge.v1.jsonrpc) = {params: PARAMS_SHAPE_POSITIONAL, fields: ["a", "b"]}; } }`, `rpc bad.v1.S.R: fields names "b", which bad.v1.M does not have (it has a, n)`},
		{`service S { rpc R(M) returns (E) { option (wsbridge.v1.jsonrpc) = {params: PARAMS_SHAPE_POSITIONAL, fields: ["a"]}; } }`, "fields leaves out n of bad.v1.M"},
		{`service S { rpc R(M) returns (E) { option (wsbridge.v1.jsonrpc) = {params: PARAMS_SHAPE_NONE}; } }`, "params NONE sends nothing of the request, but bad.v1.M has fields (a, n)"},
		{`service S { rpc R(M) returns (E) { option (wsbridge.v1.jsonrpc) = {fields: ["a"]}; } }`, "need params POSITIONAL"},
		{`service S { rpc R(E) returns (M) { option (wsbridge.v1.jsonrpc) = {result_field: "b"}; } }`, `result_field names "b", which bad.v1.M does not have`},
		{`service S { rpc R(E) returns (E) { option (wsbridge.v1.jsonrpc) = {params: PARAMS_SHAPE_NONE, params_prefix: ["nope"]}; } }`, `params_prefix "nope" is not a JSON value`},
		{`message F { string s = 1 [(wsbridge.v1.jsonrpc_field) = {integers: INTEGER_ENCODING_HEX}]; }
		  service S { rpc R(F) returns (E) { option (wsbridge.v1.jsonrpc) = {}; } }`, "field bad.v1.F.s: (wsbridge.v1.jsonrpc_field).integers applies to 64-bit integer fields"},
		{`service S { rpc R(E) returns (E); }`, "no service has the (wsbridge.v1.jsonrpc_service) option"},
	} {
		path := compileSet(t, map[string]string{"bad.proto": head + tc.body}, "bad.proto")
		_, err := Load([]string{path}, testLoad)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n error %v\n want one with %q", tc.body, err, tc.want)
		}
	}
	// Not a descriptor set at all, and a missing file.
	junk := filepath.Join(t.TempDir(), "junk.binpb")
	_ = os.WriteFile(junk, []byte("syntax = \"proto3\";"), 0o600)
	for path, want := range map[string]string{junk: "not a FileDescriptorSet", "/nonexistent.binpb": "no such file"} {
		if _, err := Load([]string{path}, testLoad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", path, err, want)
		}
	}
	// A name the gateway serves itself.
	reserved := LoadOptions{IsSubscribe: testLoad.IsSubscribe, Reserved: func(n protoreflect.FullName) bool { return n == "kitchen.v1.Kitchen" }}
	if _, err := Load([]string{compileSet(t, nil, "kitchen.proto")}, reserved); err == nil || !strings.Contains(err.Error(), "service kitchen.v1.Kitchen: the gateway serves") {
		t.Errorf("reserved name: %v", err)
	}
}
