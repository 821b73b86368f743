package backend

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// post sends body to url as a JSON-RPC POST and returns the status and body.
func post(t *testing.T, client *http.Client, url, contentType, body string) (int, string) {
	t.Helper()
	status, got, err := doPost(client, url, contentType, body)
	if err != nil {
		t.Fatalf("POST %s: %v", body, err)
	}
	return status, got
}

// doPost is post for goroutines other than the test's, which must not call
// t.Fatal.
func doPost(client *http.Client, url, contentType, body string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// httpURL turns startServer's ws:// URL into the same server's http:// URL.
func httpURL(wsURL string) string { return "http" + strings.TrimPrefix(wsURL, "ws") }

// TestPostTranscript sends the WebSocket transcript as POST bodies over one
// keep-alive connection: each must get the same bytes back as the frame did.
func TestPostTranscript(t *testing.T) {
	t.Parallel()
	_, url := startServer(t, Options{})
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	t.Cleanup(client.CloseIdleConnections)
	for _, tc := range transcript {
		t.Run(tc.name, func(t *testing.T) {
			status, got := post(t, client, httpURL(url), "application/json", tc.send)
			if status != http.StatusOK || got != tc.want {
				t.Errorf("\n--> %s\n<-- %d %s\nwant 200 %s", tc.send, status, got, tc.want)
			}
		})
	}
}

func TestPost(t *testing.T) {
	t.Parallel()
	_, url := startServer(t, Options{ReadLimit: 1024})
	url = httpURL(url) + "/any/path"
	client := &http.Client{}
	t.Cleanup(client.CloseIdleConnections)
	for _, tc := range []struct {
		name, contentType, body string
		status                  int
		want                    string // the body, or for errors a part of it
	}{
		{"charset is fine", "application/json; charset=utf-8", `{"jsonrpc":"2.0","id":"a","method":"echo","params":[1]}`,
			http.StatusOK, `{"jsonrpc":"2.0","id":"a","result":[1]}`},
		{"batch", "application/json", `[{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]},{"jsonrpc":"2.0","method":"echo"}]`,
			http.StatusOK, `[{"jsonrpc":"2.0","id":1,"result":3}]`},
		{"notifications only", "application/json", `{"jsonrpc":"2.0","method":"echo"}`,
			http.StatusNoContent, ``},
		{"subscribe needs a socket", "application/json", `{"jsonrpc":"2.0","id":1,"method":"demo_subscribe","params":[5]}`,
			http.StatusOK, `{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":"subscriptions need a WebSocket connection"}}`},
		{"unsubscribe needs a socket", "application/json", `{"jsonrpc":"2.0","id":1,"method":"demo_unsubscribe","params":["0x1"]}`,
			http.StatusOK, `{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"demo_unsubscribe takes [subscriptionId]"}}`},
		{"not JSON", "text/plain", `{"jsonrpc":"2.0","id":1,"method":"echo"}`,
			http.StatusUnsupportedMediaType, "application/json"},
		{"no content type", "", `{"jsonrpc":"2.0","id":1,"method":"echo"}`,
			http.StatusUnsupportedMediaType, "application/json"},
		{"over the read limit", "application/json", `{"jsonrpc":"2.0","id":1,"method":"echo","params":["` + strings.Repeat("x", 2000) + `"]}`,
			http.StatusRequestEntityTooLarge, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, got := post(t, client, url, tc.contentType, tc.body)
			ok := got == tc.want
			if status != http.StatusOK && status != http.StatusNoContent {
				ok = strings.Contains(got, tc.want)
			}
			if status != tc.status || !ok {
				t.Errorf("\n--> %s\n<-- %d %s\nwant %d %s", tc.body, status, got, tc.status, tc.want)
			}
		})
	}

	// A GET that is not a handshake is still refused as before.
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired {
		t.Errorf("plain GET: status %d, want %d", resp.StatusCode, http.StatusUpgradeRequired)
	}
}

// TestPostShutdown checks that Serve's shutdown ends a POSTed call in
// flight with 503 and still returns cleanly.
func TestPostShutdown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	url := "http://" + ln.Addr().String() + "/"
	client := &http.Client{}
	t.Cleanup(client.CloseIdleConnections)

	type answer struct {
		status int
		body   string
		err    error
	}
	got := make(chan answer, 1)
	go func() {
		status, body, err := doPost(client, url, "application/json", `{"jsonrpc":"2.0","id":1,"method":"sleep","params":[3600000]}`)
		got <- answer{status, body, err}
	}()
	// Wait until the sleep has reached the Server.
	for deadline := time.Now().Add(ioTimeout); s.Requests() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the sleep never reached the server")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case a := <-got:
		if a.err != nil || a.status != http.StatusServiceUnavailable {
			t.Errorf("sleep in flight at shutdown: %d %s %v, want 503", a.status, a.body, a.err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("the sleep in flight did not end at shutdown")
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return")
	}
}
