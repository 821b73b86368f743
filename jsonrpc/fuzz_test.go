package jsonrpc

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"unicode/utf8"
)

// FuzzParseRequests feeds arbitrary client messages to ParseRequests. It
// must not panic; every request either has an error or is servable (a
// method, params an object or array, an id that is a piece of the input),
// nothing that is not UTF-8 passes, and every reply built from the result
// is valid JSON.
func FuzzParseRequests(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`,
		`[{"jsonrpc":"2.0","id":"a","method":"m"},{"jsonrpc":"2.0","method":"n"}]`,
		`[]`, `[1]`, `{"foo":1}`, `{"jsonrpc":"2.0","id":{},"method":"m"}`, `{"jsonrpc":"2.0","id":null,"method":"m","params":null}`,
		`{"jsonrpc":"2.0","id":1,"method":"m","params":"x"}`, `{"jsonrpc":"2.0","ID":1,"Method":"m"}`, "\xff", `[[[`, `"s"`,
		"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"m\",\"params\":[\"\xff\"]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		reqs, batch := ParseRequests(frame)
		if len(reqs) == 0 {
			t.Fatal("no request and no error")
		}
		var replies [][]byte
		for _, r := range reqs {
			switch {
			case r.Err != nil:
				replies = append(replies, AppendError(nil, r.ID, r.Err))
			case r.IsNotification():
			default:
				if !utf8.Valid(frame) {
					t.Fatal("a message that is not UTF-8 was accepted")
				}
				if r.Method == "" {
					t.Fatal("valid request without a method")
				}
				if len(r.Params) > 0 && r.Params[0] != '{' && r.Params[0] != '[' {
					t.Fatalf("params %s passed", r.Params)
				}
				if !json.Valid(r.ID) || !bytes.Contains(frame, r.ID) {
					t.Fatalf("id %q is not a piece of the input", r.ID)
				}
				replies = append(replies, AppendResult(nil, r.ID, json.RawMessage(`true`)),
					AppendError(nil, r.ID, &Error{Code: 0, Message: "x\xff"}))
			}
		}
		out := AppendBatch(nil, replies)
		if batch && !json.Valid(out) || !batch && len(replies) > 0 && !json.Valid(replies[0]) {
			t.Fatalf("invalid reply %q", out)
		}
	})
}

// FuzzIDRoundTrip: whatever id a client sends, the reply carries it byte
// for byte.
func FuzzIDRoundTrip(f *testing.F) {
	for _, id := range []string{`1`, `"1"`, `1.5`, `null`, `18446744073709551616`, `-0`, `1e400`, `"\u00e9"`, `"\\"`, ` 7 `} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		frame := []byte(`{"jsonrpc":"2.0","id":` + id + `,"method":"echo"}`)
		reqs, _ := ParseRequests(frame)
		r := reqs[0]
		if !json.Valid([]byte(id)) || r.Err != nil {
			return
		}
		var v any
		if err := json.Unmarshal([]byte(id), &v); err != nil {
			return
		}
		switch v.(type) {
		case string, float64, nil:
		default:
			t.Fatalf("id %s of type %T accepted", id, v)
		}
		out := AppendResult(nil, r.ID, json.RawMessage(`1`))
		var got struct {
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("reply %q: %v", out, err)
		}
		if !bytes.Equal(got.ID, bytes.TrimSpace([]byte(id))) {
			t.Fatalf("id %q came back as %q", id, got.ID)
		}
	})
}

// FuzzBrokenFrameIDs: no panic, and when the frame is a complete message
// the ids found are exactly those a full decode finds at the top level of
// a reply.
func FuzzBrokenFrameIDs(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":7,"result":`, `{"jsonrpc":"2.0","result":{"id":5}}`, `[{"id":1,"result":1},{"id":2,"result":`,
		`{"jsonrpc":"2.0","method":"m","params":{"id":1}}`, `{"id":"7","x":"\"id\":8"}`, `{"id":1,"id":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		ids := BrokenFrameIDs(frame)
		if !json.Valid(frame) {
			return
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(frame, &obj) != nil {
			return
		}
		if len(ids) > 1 {
			t.Fatalf("an object gave %d ids", len(ids))
		}
		if len(ids) == 1 {
			if _, hasMethod := obj["method"]; hasMethod {
				t.Fatalf("%s names a caller though it has a method", frame)
			}
			if IDKey(obj["id"]) != IDKey(ids[0]) {
				t.Fatalf("%s: found id %s, the message's is %s", frame, ids[0], obj["id"])
			}
		}
	})
}

// FuzzSubscription: on any params no panic. On valid JSON, SubscriptionID
// and SubscriptionResult find what a full decode finds at the top level
// (a member given once, by its exact name), and WithSubscriptionID changes
// the id and nothing else.
func FuzzSubscription(f *testing.F) {
	for _, s := range []string{
		`{"subscription":"0x9ce59a13059e417087c02d3236a0b1cc","result":{"number":"0x1b4","hash":"0x1"}}`,
		` {"result" : [1,{"subscription":2}] , "subscription" : -7e1 } `, `{"subscr\u0069ption":"a","result":"\"}"}`,
		`{"Subscription":"0x1","result":1}`, `{"subscription":"0x1","subscription":"0x2"}`, `{"subscription":{},"result":null}`,
		`["0x1"]`, `{"subscription":"0x1","result":{`, `{"subscription":"0x1"} x`, "{\"subscription\":\"\xff\"}",
	} {
		f.Add([]byte(s), []byte(`"client-1"`))
	}
	f.Add([]byte(`{"subscription":1,"result":2}`), []byte(`18446744073709551616`))
	f.Fuzz(func(t *testing.T, params, id []byte) {
		sub := SubscriptionID(params)
		result, ok := SubscriptionResult(params)
		with := WithSubscriptionID(params, id)
		if !json.Valid(params) {
			return
		}
		members, isObject := topLevel(params)
		wantSub, wantResult := members["subscription"], members["result"]
		if !isObject || len(wantSub) != 1 || !isScalarID(wantSub[0]) {
			wantSub = nil
		}
		if !isObject || len(wantResult) != 1 {
			wantResult = nil
		}
		if wantSub == nil && sub != nil || wantSub != nil && !bytes.Equal(sub, wantSub[0]) {
			t.Fatalf("%s: subscription %s, a decode finds %q", params, sub, wantSub)
		}
		if wantResult == nil && ok || wantResult != nil && (!ok || !bytes.Equal(result, wantResult[0])) {
			t.Fatalf("%s: result %s (%v), a decode finds %q", params, result, ok, wantResult)
		}
		if sub == nil {
			if !bytes.Equal(with, params) {
				t.Fatalf("%s: changed to %s without a subscription", params, with)
			}
			return
		}
		var v any
		if json.Unmarshal(id, &v) != nil || !isScalarID(bytes.TrimSpace(id)) {
			return // the caller's id must be an id
		}
		if !json.Valid(with) {
			t.Fatalf("%s with id %s: %s is not JSON", params, id, with)
		}
		after, _ := topLevel(with)
		if got := after["subscription"]; len(got) != 1 || !bytes.Equal(got[0], bytes.TrimSpace(id)) {
			t.Fatalf("%s with id %s: %s", params, id, with)
		}
		delete(members, "subscription")
		delete(after, "subscription")
		if !reflect.DeepEqual(after, members) {
			t.Fatalf("%s with id %s: %s changed other members", params, id, with)
		}
	})
}

// topLevel decodes the members of a valid JSON object, each name with its
// values in order; isObject is false for other JSON.
func topLevel(b []byte) (members map[string][]json.RawMessage, isObject bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, _ := dec.Token(); tok != json.Delim('{') {
		return nil, false
	}
	members = map[string][]json.RawMessage{}
	for dec.More() {
		name, _ := dec.Token()
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return nil, false
		}
		members[name.(string)] = append(members[name.(string)], v)
	}
	return members, true
}
