package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

func rpcPost(t *testing.T, h *harness, contentType, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.base+"/rpc", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func TestRPCOverHTTP(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	for _, tc := range []struct {
		body, want string
		status     int
	}{
		{`{"jsonrpc":"2.0","id":"x","method":"add","params":[1,2]}`, `{"jsonrpc":"2.0","id":"x","result":3}`, 200},
		{`{"jsonrpc":"2.0","id":18446744073709551616,"method":"echo","params":{"a":1}}`, `{"jsonrpc":"2.0","id":18446744073709551616,"result":{"a":1}}`, 200},
		{`{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":-32601,"message":"no"}}`, `{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}`, 200},
		{`{"jsonrpc":"2.0","id":1,"method":`, `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}`, 200},
		{`[]`, `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: empty batch"}}`, 200},
		{`{"jsonrpc":"2.0","method":"echo","params":[1]}`, ``, 204},
		{`[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"echo"}]`, ``, 204},
		{`[{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]},{"jsonrpc":"2.0","method":"echo"}]`, `[{"jsonrpc":"2.0","id":1,"result":[1]}]`, 200},
		{`{"jsonrpc":"2.0","id":1,"method":"demo_subscribe","params":[10]}`, `{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"demo_subscribe needs a connection that can push notifications: use the /ws endpoint or the gRPC BridgeService.Session (BridgeService.Subscribe and GET /v1/subscribe stream notifications by method)"}}`, 200},
	} {
		status, got := rpcPost(t, h, "application/json", tc.body)
		if status != tc.status || got != tc.want {
			t.Errorf("%s: %d %s, want %d %s", tc.body, status, got, tc.status, tc.want)
		}
	}
	if status, _ := rpcPost(t, h, "application/json; charset=utf-8", `{"jsonrpc":"2.0","id":1,"method":"echo"}`); status != 200 {
		t.Errorf("charset parameter: %d", status)
	}
	if status, _ := rpcPost(t, h, "text/plain", `{}`); status != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: %d, want 415", status)
	}
	if status, _ := rpcPost(t, h, "", `{}`); status != http.StatusUnsupportedMediaType {
		t.Errorf("no content type: %d, want 415", status)
	}
	resp, err := http.Get(h.base + "/rpc")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET: %d %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
	st, _ := h.stats.GetStats(ctxT(t), nil)
	if st.HttpProxied < 8 {
		t.Errorf("http_proxied %d", st.HttpProxied)
	}
}

func TestRPCLimitsAndGatewayErrors(t *testing.T) {
	fb := bridgetest.NewServer(t, bridgetest.Forward(nil))
	h := start(t, fb.URL(), func(o *Options) {
		o.Bridge.MaxMessageBytes = 1024
		o.Bridge.CallTimeout = 100 * time.Millisecond
	})
	big := `{"jsonrpc":"2.0","id":1,"method":"echo","params":["` + strings.Repeat("x", 2000) + `"]}`
	if status, _ := rpcPost(t, h, "application/json", big); status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversize: %d", status)
	}
	req, _ := http.NewRequest(http.MethodPost, h.base+"/rpc", io.MultiReader(strings.NewReader(big)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversize without Content-Length: %d", resp.StatusCode)
	}
	if status, got := rpcPost(t, h, "application/json", `{"jsonrpc":"2.0","id":1,"method":"hold"}`); status != 200 || !strings.Contains(got, `"code":-32015`) {
		t.Errorf("timeout: %d %s", status, got)
	}
	fb.Stop()
	if status, got := rpcPost(t, h, "application/json", `{"jsonrpc":"2.0","id":1,"method":"hold"}`); status != 200 || !strings.Contains(got, `"code":-32010`) {
		t.Errorf("backend down: %d %s", status, got)
	}
}
