package server

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// FuzzClientFrame feeds arbitrary client frames to the /ws and /rpc path
// (jsonrpc.ParseRequests, then the session's reply encoding with every
// kind of outcome). It must not panic, and every reply must be valid
// JSON-RPC.
func FuzzClientFrame(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`,
		`[{"jsonrpc":"2.0","id":"a","method":"m"},{"jsonrpc":"2.0","method":"n"}]`,
		`[]`, `[1]`, `{"foo":1}`, `{"jsonrpc":"2.0","id":{},"method":"m"}`, "\xff", `[[[`,
	} {
		f.Add([]byte(s))
	}
	outcomes := []error{nil, errors.New("plain"), errDuplicateID, errGoingAway,
		&bridge.Error{Code: bridge.CodeUnavailable, Message: "x\xff"},
		&bridge.Error{Code: bridge.CodeBackendError, RPC: &jsonrpc.Error{Code: 0, Message: "zero", Data: json.RawMessage(`{"a":1}`)}}}
	f.Fuzz(func(t *testing.T, frame []byte) {
		reqs, batch := jsonrpc.ParseRequests(frame)
		var replies []reply
		for i, r := range reqs {
			err := r.Err
			var e error
			if err != nil {
				e = err
			} else if !r.IsNotification() {
				e = outcomes[i%len(outcomes)]
			} else {
				continue
			}
			if replyDue(e) {
				replies = append(replies, reply{id: r.ID, result: json.RawMessage(`true`), err: e})
			}
		}
		if len(replies) == 0 {
			return
		}
		out := jsonReplies(batch, replies)
		if !json.Valid(out) {
			t.Fatalf("invalid reply %q", out)
		}
	})
}
