package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/wsbridge/wsbridge/bridge"
)

// FuzzClientFrame feeds arbitrary client frames to the /ws and /rpc
// decoder. It must not panic, and every reply it leads to must be valid
// JSON-RPC.
func FuzzClientFrame(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`,
		`[{"jsonrpc":"2.0","id":"a","method":"m"},{"jsonrpc":"2.0","method":"n"}]`,
		`[]`, `[1]`, `{"foo":1}`, `{"jsonrpc":"2.0","id":{},"method":"m"}`, `{"jsonrpc":"2.0","id":null,"method":"m","params":null}`,
		`{"jsonrpc":"2.0","id":1,"method":"m","params":"x"}`, `{"jsonrpc":"2.0","ID":1,"Method":"m"}`, "\xff", `[[[`, `"s"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		reqs, batch := parseClientFrame(frame)
		if len(reqs) == 0 {
			t.Fatal("no request and no error")
		}
		var replies [][]byte
		for _, r := range reqs {
			switch {
			case r.invalid != nil:
				replies = append(replies, appendError(nil, r.id, r.invalid))
			case r.isNotification():
			default:
				if r.method == "" {
					t.Fatal("valid request without a method")
				}
				if len(r.params) > 0 && r.params[0] != '{' && r.params[0] != '[' {
					t.Fatalf("params %s passed", r.params)
				}
				if !json.Valid(r.id) || !bytes.Contains(frame, r.id) {
					t.Fatalf("id %q is not a piece of the input", r.id)
				}
				replies = append(replies, appendResult(nil, r.id, json.RawMessage(`true`)),
					reply(r.id, nil, &bridge.Error{Code: bridge.CodeUnavailable, Message: "x\xff"}))
			}
		}
		out := joinArray(replies)
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
		reqs, _ := parseClientFrame(frame)
		r := reqs[0]
		if !json.Valid([]byte(id)) || r.invalid != nil {
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
		out := appendResult(nil, r.id, json.RawMessage(`1`))
		var got struct {
			ID json.RawMessage `json:"id"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("reply %q: %v", out, err)
		}
		if !bytes.Equal(got.ID, bytes.TrimSpace([]byte(id))) {
			t.Fatalf("id %q came back as %q", id, got.ID)
		}
		if _, err := rpcErrorFor(errors.New("plain")); err != nil {
			t.Fatal(err)
		}
	})
}
