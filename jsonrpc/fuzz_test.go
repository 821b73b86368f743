package jsonrpc

import (
	"bytes"
	"encoding/json"
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
