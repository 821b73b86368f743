package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// Issue 20 item 5, against the built binary: with --max-message-bytes
// 1 MiB and --max-reply-bytes 512 KiB, a 600 KB echo passes as a request
// but its reply is over the reply limit. That call alone fails, on every
// face, as a reply too large (RESOURCE_EXHAUSTED, 429, -32021); the echo
// calls running beside it all succeed, and the backend link stays up (one
// connect, no breaker trip).
func TestOversizeReplyFailsOnlyItsCall(t *testing.T) {
	_, url := startBackend(t, "127.0.0.1:0")
	g := startGateway(t, "--backend", url, "--max-message-bytes", "1048576", "--max-reply-bytes", "524288")
	load := startEchoLoad(t, g, 16)
	load.waitOK(t, 100)

	big := `["` + strings.Repeat("x", 600_000) + `"]`
	const why = "reply was larger than the 524288-byte reply limit"

	_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Params: params(t, big)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), why) {
		t.Errorf("gRPC: %v; want RESOURCE_EXHAUSTED saying %q", err, why)
	}
	load.waitOK(t, 100)

	resp, err := http.Post("http://"+g.httpAddr+"/v1/call", "application/json", strings.NewReader(`{"method":"echo","params":`+big+`}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), why) {
		t.Errorf("REST: %d %.300s; want 429 saying %q", resp.StatusCode, body, why)
	}

	resp, err = http.Post("http://"+g.httpAddr+"/rpc", "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"echo","params":`+big+`}`))
	if err != nil {
		t.Fatal(err)
	}
	var rpc struct {
		Error struct {
			Code    int
			Message string
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&rpc)
	resp.Body.Close()
	if err != nil || rpc.Error.Code != -32021 || !strings.Contains(rpc.Error.Message, why) {
		t.Errorf("JSON-RPC: %+v %v; want -32021 saying %q", rpc, err, why)
	}

	// The link carries on: the calls beside the big ones succeed, and
	// more after them.
	load.waitOK(t, 100)
	load.finish(t)
	st := g.getStats(t)
	if st.BackendConnects != 1 || st.BackendReconnects != 0 || st.OversizeReplies != 3 || st.MalformedFrames != 0 {
		t.Errorf("backend_connects %d, backend_reconnects %d, oversize_replies %d, malformed_frames %d; want 1, 0, 3, 0",
			st.BackendConnects, st.BackendReconnects, st.OversizeReplies, st.MalformedFrames)
	}
	if row := st.Backends[0]; row.Breaker != "closed" || row.TransportErrors != 0 {
		t.Errorf("backend row %v: want the breaker closed and no transport error", row)
	}
	if n := st.ErrorsByReason["too_large"]; n != 3 {
		t.Errorf("errors_by_reason too_large %d, want 3 (%v)", n, st.ErrorsByReason)
	}
	resp, err = http.Get("http://" + g.httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(metrics), "\nwsbridge_oversize_replies_total 3\n") {
		t.Errorf("/metrics lacks wsbridge_oversize_replies_total 3")
	}
	resp, err = http.Get("http://" + g.httpAddr + "/__stats")
	if err != nil {
		t.Fatal(err)
	}
	var seed map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&seed)
	resp.Body.Close()
	if seed["oversizeReplies"] != 3.0 {
		t.Errorf("/__stats oversizeReplies %v, want 3", seed["oversizeReplies"])
	}
}
