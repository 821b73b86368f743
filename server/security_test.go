package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/backend"
	"github.com/wsbridge/wsbridge/backend/backendtest"
	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/auth"
)

type tokens map[string]bool

func (t tokens) Check(tok string) bool { return t[tok] }

func withToken(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

func httpDo(t *testing.T, method, url, body string, header http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Scenario 29: no request without a valid token reaches the backend, on
// any face; health stays open; tokens in the query string are refused.
func TestAuthOnEveryFace(t *testing.T) {
	url, be := backendtest.Start(t, backend.Options{})
	h := start(t, url, func(o *Options) { o.Auth = tokens{"s3cret": true, "rotated": true} })
	good := http.Header{"Authorization": {"Bearer s3cret"}}
	bad := http.Header{"Authorization": {"Bearer nope"}}

	// Refused everywhere without a valid token.
	for _, hdr := range []http.Header{nil, bad} {
		ctx := ctxT(t)
		if hdr != nil {
			ctx = withToken(ctx, "nope")
		}
		if _, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("gRPC Call: %v", err)
		}
		if _, err := h.stats.GetStats(ctx, &wsbridgev1.GetStatsRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Errorf("GetStats: %v", err)
		}
		if s, err := h.bridge.Subscribe(ctx, &wsbridgev1.SubscribeRequest{}); err == nil {
			if _, err := s.Recv(); status.Code(err) != codes.Unauthenticated {
				t.Errorf("Subscribe: %v", err)
			}
		}
		for _, path := range []string{"/v1/call/echo", "/rpc", "/v1/notify"} {
			if code, _ := httpDo(t, http.MethodPost, h.base+path, `{"jsonrpc":"2.0","id":1,"method":"echo"}`, hdr); code != http.StatusUnauthorized {
				t.Errorf("%s: HTTP %d", path, code)
			}
		}
		if code, _ := httpDo(t, http.MethodGet, h.base+"/__stats", "", hdr); code != http.StatusUnauthorized {
			t.Errorf("/__stats: HTTP %d", code)
		}
		_, resp, err := websocket.Dial(ctxT(t), strings.Replace(h.base, "http", "ws", 1)+"/ws", &websocket.DialOptions{HTTPHeader: hdr})
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("/ws handshake: %v", err)
		}
	}
	// A token in the query string is refused even next to a good header.
	if code, _ := httpDo(t, http.MethodPost, h.base+"/rpc?access_token=s3cret", `{"jsonrpc":"2.0","id":1,"method":"echo"}`, good); code != http.StatusUnauthorized {
		t.Errorf("query token: HTTP %d", code)
	}
	if n := be.Requests(); n != 0 {
		t.Fatalf("%d unauthenticated requests reached the backend", n)
	}

	// Health and reflection stay open.
	if r, err := healthpb.NewHealthClient(h.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health without a token: %v %v", r, err)
	}
	if code, _ := httpDo(t, http.MethodGet, h.base+"/healthz", "", nil); code != 200 {
		t.Errorf("/healthz without a token: %d", code)
	}

	// With a valid token everything works.
	if _, err := h.bridge.Call(withToken(ctxT(t), "rotated"), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Errorf("gRPC with token: %v", err)
	}
	if code, body := httpDo(t, http.MethodPost, h.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`, good); code != 200 || !strings.Contains(body, `"result":[1]`) {
		t.Errorf("/rpc with token: %d %s", code, body)
	}
	if code, _ := httpDo(t, http.MethodPost, h.base+"/v1/call/echo", `[1]`, good); code != 200 {
		t.Errorf("REST with token: %d", code)
	}
	conn, _, err := websocket.Dial(ctxT(t), strings.Replace(h.base, "http", "ws", 1)+"/ws", &websocket.DialOptions{HTTPHeader: good})
	if err != nil {
		t.Fatalf("/ws with header: %v", err)
	}
	conn.CloseNow()
	// Browsers cannot set headers: the token as a second subprotocol; the
	// handshake selects the fixed one, never the token.
	conn, resp, err := websocket.Dial(ctxT(t), strings.Replace(h.base, "http", "ws", 1)+"/ws", &websocket.DialOptions{Subprotocols: []string{"wsbridge", "bearer.s3cret"}})
	if err != nil {
		t.Fatalf("/ws with subprotocol: %v", err)
	}
	if conn.Subprotocol() != "wsbridge" || strings.Contains(strings.Join(resp.Header.Values("Sec-WebSocket-Protocol"), ","), "s3cret") {
		t.Errorf("subprotocol %q selected, response header %q", conn.Subprotocol(), resp.Header.Values("Sec-WebSocket-Protocol"))
	}
	conn.CloseNow()
	if be.Requests() != 3 {
		t.Fatalf("backend saw %d requests, want the 3 authenticated calls", be.Requests())
	}
}

func TestAuthAllCoversHealth(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.Auth = tokens{"s3cret": true}; o.AuthAll = true })
	if _, err := healthpb.NewHealthClient(h.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("health: %v", err)
	}
	if code, _ := httpDo(t, http.MethodGet, h.base+"/healthz", "", nil); code != http.StatusUnauthorized {
		t.Errorf("/healthz: %d", code)
	}
	if _, err := healthpb.NewHealthClient(h.conn).Check(withToken(ctxT(t), "s3cret"), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health with token: %v", err)
	}
}

// Denied methods never reach the backend, on any face.
func TestMethodAllowAndDenyLists(t *testing.T) {
	url, be := backendtest.Start(t, backend.Options{})
	h := start(t, url, func(o *Options) {
		o.Bridge.AllowMethods = []string{"echo", "admin_*"}
		o.Bridge.DenyMethods = []string{"admin_shutdown"}
	})
	for _, m := range []string{"add", "admin_shutdown"} {
		if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: m}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("gRPC %s: %v", m, err)
		}
		if code, _ := httpDo(t, http.MethodPost, h.base+"/v1/call/"+m, `[1]`, nil); code != http.StatusForbidden {
			t.Errorf("REST %s: %d", m, code)
		}
		if _, body := httpDo(t, http.MethodPost, h.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"`+m+`"}`, nil); !strings.Contains(body, `"code":-32001`) {
			t.Errorf("/rpc %s: %s", m, body)
		}
		c := dialWS(t, h)
		if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"` + m + `"}`); !strings.Contains(got, `"code":-32001`) {
			t.Errorf("/ws %s: %s", m, got)
		}
	}
	if be.Requests() != 0 {
		t.Fatalf("denied calls reached the backend: %d", be.Requests())
	}
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatalf("allowed method: %v", err)
	}
}

// Scenario 28: a cross-origin handshake gets 403 and the backend sees
// nothing; an allowlisted origin is let in.
func TestWSOriginCheck(t *testing.T) {
	url, be := backendtest.Start(t, backend.Options{})
	h := start(t, url, func(o *Options) { o.WSOrigins = []string{"app.example"} })
	wsURL := strings.Replace(h.base, "http", "ws", 1) + "/ws"
	_, resp, err := websocket.Dial(ctxT(t), wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example"}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("evil origin: %v %v", resp, err)
	}
	conn, _, err := websocket.Dial(ctxT(t), wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://app.example"}}})
	if err != nil {
		t.Fatalf("allowed origin: %v", err)
	}
	conn.CloseNow()
	if be.Requests() != 0 {
		t.Fatal("the backend saw traffic")
	}
}

// selfSigned returns a certificate for 127.0.0.1 and a pool trusting it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wsbridge test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// Scenario 31: TLS listeners, 1.2 at least; plaintext refused.
func TestTLSListeners(t *testing.T) {
	cert, pool := selfSigned(t)
	h := startTLS(t, demoBackend(t), &tls.Config{Certificates: []tls.Certificate{cert}})
	creds := credentials.NewTLS(&tls.Config{RootCAs: pool})
	conn, err := grpc.NewClient(h.srv.GRPCAddr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := wsbridgev1.NewBridgeServiceClient(conn).Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatalf("gRPC over TLS: %v", err)
	}
	plain, _ := grpc.NewClient(h.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer plain.Close()
	ctx, cancel := context.WithTimeout(ctxT(t), 2*time.Second)
	defer cancel()
	if _, err := wsbridgev1.NewBridgeServiceClient(plain).Call(ctx, &wsbridgev1.CallRequest{Method: "echo"}); err == nil {
		t.Fatal("plaintext gRPC accepted")
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + h.srv.HTTPAddr().String() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HTTPS: %v %v", resp, err)
	}
	resp.Body.Close()
	old := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11}}}
	if _, err := old.Get("https://" + h.srv.HTTPAddr().String() + "/healthz"); err == nil {
		t.Fatal("TLS 1.1 accepted")
	}
	if resp, err := http.Get("http://" + h.srv.HTTPAddr().String() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plaintext HTTP accepted")
		}
	}
}

func startTLS(t *testing.T, backendURL string, cfg *tls.Config) *harness {
	t.Helper()
	srv, err := New(Options{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", TLS: cfg, Bridge: bridge.Options{URL: backendURL}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &harness{srv: srv}
}

// Scenario 31: a wss backend with a self-signed certificate is refused
// (and readiness reports NOT_SERVING); trusted through the CA, it works.
func TestWSSBackendVerification(t *testing.T) {
	be := httptest.NewTLSServer(backend.New(backend.Options{}))
	t.Cleanup(be.Close)
	wss := strings.Replace(be.URL, "https", "wss", 1)
	h := start(t, wss, func(o *Options) { o.Bridge.Eager = true; o.Bridge.Backoff = bridge.Backoff{Base: time.Hour} })
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("self-signed backend: %v", err)
	}
	if st, err := h.stats.GetStats(ctxT(t), nil); err != nil || !strings.Contains(st.GetLastDialError(), "certificate") {
		t.Fatalf("last dial error %q (%v)", st.GetLastDialError(), err)
	}
	bridgetest.Eventually(t, "readiness NOT_SERVING", func() bool {
		r, err := healthpb.NewHealthClient(h.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{})
		return err == nil && r.Status == healthpb.HealthCheckResponse_NOT_SERVING
	})
	if r, _ := healthpb.NewHealthClient(h.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{Service: LivenessService}); r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("liveness %v", r)
	}

	pool := x509.NewCertPool()
	pool.AddCert(be.Certificate())
	trusted := start(t, wss, func(o *Options) {
		o.Bridge.HTTPClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	})
	if _, err := trusted.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatalf("trusted backend: %v", err)
	}
}

func TestMaxClientsAndPerClientInFlight(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.MaxClients = 2; o.MaxInFlightPerClient = 2 })
	a, b := dialWS(t, h), dialWS(t, h)
	_, resp, err := websocket.Dial(ctxT(t), strings.Replace(h.base, "http", "ws", 1)+"/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("client over --max-clients: %v", err)
	}
	a.send(`{"jsonrpc":"2.0","id":1,"method":"sleep","params":[300]}`)
	a.send(`{"jsonrpc":"2.0","id":2,"method":"sleep","params":[300]}`)
	if got := a.roundTrip(`{"jsonrpc":"2.0","id":3,"method":"echo"}`); !strings.Contains(got, `"id":3`) || !strings.Contains(got, `"code":-32012`) {
		t.Fatalf("third call in flight: %s", got)
	}
	if got := b.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`); got != `{"jsonrpc":"2.0","id":1,"result":[1]}` {
		t.Fatalf("the other client: %s", got)
	}
}

// Scenario 30: slowloris connections are closed at ReadHeaderTimeout.
func TestSlowlorisIsCut(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.ReadHeaderTimeout = 200 * time.Millisecond })
	const n = 200
	var wg sync.WaitGroup
	closed := make(chan time.Duration, n)
	for range n {
		wg.Go(func() {
			c, err := net.Dial("tcp", h.srv.HTTPAddr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			start := time.Now()
			_, _ = c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n"))
			buf := make([]byte, 1)
			for {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := c.Write([]byte("X")); err != nil {
					break
				}
				_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				if _, err := c.Read(buf); err != nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						break // closed by the server (or a 408 read, then closed)
					}
				}
				if time.Since(start) > 10*time.Second {
					break
				}
			}
			closed <- time.Since(start)
		})
	}
	wg.Wait()
	close(closed)
	for d := range closed {
		if d > 5*time.Second {
			t.Fatalf("a slowloris connection lived %v with a 200ms ReadHeaderTimeout", d)
		}
	}
}

// Scenario 30: a gRPC client pinging every few milliseconds gets GOAWAY
// "too_many_pings" (keepalive enforcement).
func TestGRPCPingFloodGetsGoAway(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	c, err := net.Dial("tcp", h.srv.GRPCAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	done := make(chan struct{})
	defer close(done)
	go func() {
		for i := uint64(0); ; i++ {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			var data [8]byte
			data[7] = byte(i)
			if fr.WritePing(false, data) != nil {
				return
			}
		}
	}()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended without GOAWAY: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm || !strings.Contains(string(ga.DebugData()), "too_many_pings") {
				t.Fatalf("GOAWAY %v %q", ga.ErrCode, ga.DebugData())
			}
			return
		}
	}
}

// tokenAuth is an Auth accepting the tokens, from a token file.
func tokenAuth(t *testing.T, tokens ...string) *auth.TokenFile {
	t.Helper()
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte(strings.Join(tokens, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := auth.Load(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tf
}
