package typed

import (
	"bytes"
	"encoding/json"
	"testing"

	"google.golang.org/protobuf/proto"
)

// Any result text decodes into the response or fails with an error, never
// a panic; what decodes, encodes to JSON that decodes to the same message.
func FuzzResult(f *testing.F) {
	api := kitchen(f)
	m := method(f, api, "kitchen.v1.Kitchen.Echo")
	for _, seed := range []string{`{"i64":"0x20000000000001","u64":18446744073709551615,"list":[1,"2","0x3"]}`,
		`{"inner":{"children":[{"children":[{}]}]},"counts":{"a":1},"byNumber":{"-1":{"name":"x"}}}`,
		`{"at":"2026-12-01T10:00:00Z","extra":{"k":[1,null]},"anyValue":{"a":"b"},"first":"x"}`,
		`{"data":"0xzz","hexdata":"AQI","color":"COLOR_RED","d":"NaN","f":1e39}`, `null`, `[]`, `"s"`, `{"text":"\ud800"}`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := m.Result(data)
		if err != nil {
			return
		}
		params, err := m.Params(resp)
		if err != nil {
			t.Fatalf("%s decoded but does not encode: %v", data, err)
		}
		if !json.Valid(params) {
			t.Fatalf("invalid JSON %s", params)
		}
		again, err := m.Result(params)
		if err != nil {
			t.Fatalf("%s: its encoding %s does not decode: %v", data, params, err)
		}
		if p2, _ := m.Params(again); !bytes.Equal(p2, params) {
			t.Fatalf("%s: %s then %s", data, params, p2)
		}
	})
}

// Any request message (as protobuf bytes from a client) encodes to valid
// JSON params for every shape, or fails with an error.
func FuzzParams(f *testing.F) {
	api := kitchen(f)
	methods := []*Method{method(f, api, "kitchen.v1.Kitchen.Echo"), method(f, api, "kitchen.v1.Kitchen.Position"), method(f, api, "kitchen.v1.Strict.Get")}
	for _, js := range []string{`{"i64":"-1","quantity":"9007199254740993","data":"AQI=","inner":{"children":[{}]},"counts":{"a":"1"}}`, `{"d":"NaN","f":"-Infinity","second":1}`} {
		req := request(f, methods[0], js)
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint8(0))
	}
	f.Add([]byte{0x0a, 0x01, 'x', 0x10, 0x07}, uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, which uint8) {
		m := methods[int(which)%len(methods)]
		req := m.NewRequest()
		if err := proto.Unmarshal(data, req); err != nil {
			return
		}
		params, err := m.Params(req)
		if err != nil {
			return
		}
		if params != nil && !json.Valid(params) {
			t.Fatalf("invalid JSON params %s", params)
		}
	})
}
