package server

// Tests of the security review's findings (issue "security hardening"):
// each reproduces a finding against the server in process, over real
// sockets, and checks what every client sees.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/auth"
)

// Finding 1: credentials are checked before the message is read. A
// tokenless Call larger than the message limit gets UNAUTHENTICATED, not
// the RESOURCE_EXHAUSTED that reading it would give; open services without
// a token are capped at MaxOpenRPCs at once, whatever the connections.
func TestHardeningNoCostlyWorkBeforeAuthentication(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	h := start(t, srv.URL(), func(o *Options) {
		o.Auth = tokens{"s3cret": true}
		o.MaxOpenRPCs = 3
		o.Bridge.MaxMessageBytes = 1 << 20
	})
	big := structpb.NewStringValue(strings.Repeat("x", 2<<20))
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Params: structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{big}})},
		grpc.MaxCallSendMsgSize(8<<20))
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("tokenless 2 MiB Call: %v (read before the token was checked?)", err)
	}
	// Tokenless health watches: three at once, the fourth refused; with a
	// token no such cap.
	health := healthpb.NewHealthClient(h.conn)
	var watches []healthpb.Health_WatchClient
	for range 3 {
		w, err := health.Watch(ctxT(t), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatalf("open watch: %v", err)
		}
		watches = append(watches, w)
	}
	w, err := health.Watch(ctxT(t), &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = w.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("fourth tokenless watch: %v", err)
	}
	if _, err := health.Check(withToken(ctxT(t), "s3cret"), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health with a token while the open slots are taken: %v", err)
	}
	if srv.Frames() != 0 {
		t.Fatalf("%d frames reached the backend", srv.Frames())
	}
	_ = watches
}

// Finding 3: revocation bites. A /ws client, a gRPC Session and a
// Subscribe stream opened with a token are ended (1008, UNAUTHENTICATED)
// within a few seconds of the token's removal from the file; one with a
// token still listed goes on; an emptied file accepts no token at all.
func TestHardeningRevocationEndsOpenConversations(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("alpha\nbeta\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := auth.Load(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, demoBackend(t), func(o *Options) { o.Auth = tf; o.RevocationCheck = 20 * time.Millisecond })
	wsURL := strings.Replace(h.base, "http", "ws", 1) + "/ws"
	dial := func(tok string) *websocket.Conn {
		c, _, err := websocket.Dial(ctxT(t), wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + tok}}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	alphaWS, betaWS := dial("alpha"), dial("beta")
	session, err := h.bridge.Session(withToken(ctxT(t), "alpha"))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := h.bridge.Subscribe(withToken(ctxT(t), "alpha"), &wsbridgev1.SubscribeRequest{Methods: []string{"tick"}})
	if err != nil {
		t.Fatal(err)
	}
	// Both are open: a call on the session answers.
	if err := session.Send(&wsbridgev1.SessionRequest{Id: "1", Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := session.Recv(); err != nil {
		t.Fatal(err)
	}

	// alpha is removed from the file.
	rewrite(t, file, "beta\n")
	if _, _, err := alphaWS.Read(ctxT(t)); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("/ws with a revoked token: %v, want 1008", err)
	}
	if _, err := session.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Session with a revoked token: %v", err)
	}
	if _, err := sub.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Subscribe with a revoked token: %v", err)
	}
	if err := betaWS.Write(ctxT(t), websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`)); err != nil {
		t.Fatal(err)
	}
	if _, b, err := betaWS.Read(ctxT(t)); err != nil || string(b) != `{"jsonrpc":"2.0","id":1,"result":[1]}` {
		t.Fatalf("/ws with a token still listed: %s %v", b, err)
	}
	if _, err := h.bridge.Call(withToken(ctxT(t), "alpha"), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("new call with the revoked token: %v", err)
	}

	// A file with only a comment accepts nothing: beta goes too.
	rewrite(t, file, "# beta\n")
	if _, _, err := betaWS.Read(ctxT(t)); websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("/ws once the file holds no token: %v, want 1008", err)
	}
	if _, err := h.bridge.Call(withToken(ctxT(t), "beta"), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("call once the file holds no token: %v", err)
	}
	if st, _ := h.stats.GetStats(withToken(ctxT(t), "beta"), nil); st != nil {
		t.Fatal("GetStats answered with no valid token")
	}
	if n := h.srv.counters.revoked.Load(); n != 4 {
		t.Fatalf("%d conversations counted as revoked, want 4", n)
	}
}

// rewrite replaces a token file's content and moves its modification time
// on, so that a reload within the same second sees the change.
func rewrite(t *testing.T, file, content string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(file, later, later); err != nil {
		t.Fatal(err)
	}
}

// Finding 4: no single client takes more than its share. With two /ws
// clients and two gRPC connections: one at its in-flight limit,
// subscription limit and listener limit is refused (-32012 /
// RESOURCE_EXHAUSTED) while the other is served; a batch over --max-batch
// runs nothing; a client that never reads is cut by bytes.
func TestHardeningPerClientBudgets(t *testing.T) {
	srv := bridgetest.NewServer(t, subscribing)
	h := start(t, srv.URL(), func(o *Options) {
		o.MaxInFlightPerClient = 3
		o.Bridge.MaxSubscriptionsPerConsumer = 2
		o.Bridge.MaxListensPerConsumer = 2
		o.MaxBatch = 10
	})
	greedy, other := dialWS(t, h), dialWS(t, h)
	for i := range 3 {
		greedy.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"hold"}`, i))
	}
	bridgetest.Eventually(t, "the greedy client's calls at the backend", func() bool { return h.srv.Bridge().Stats().Pending == 3 })
	if got := greedy.roundTrip(`{"jsonrpc":"2.0","id":9,"method":"echo"}`); !strings.Contains(got, `"code":-32012`) {
		t.Fatalf("in flight over the limit: %s", got)
	}
	if got := other.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`); got != `{"jsonrpc":"2.0","id":1,"result":[1]}` {
		t.Fatalf("the other client: %s", got)
	}
	// Subscriptions: two, then refused; the other client subscribes.
	for i := range 2 {
		if got := other.roundTrip(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"x_subscribe","params":[%d]}`, 10+i, i)); !strings.Contains(got, `"result":"0x`) {
			t.Fatalf("subscription %d: %s", i, got)
		}
	}
	if got := other.roundTrip(`{"jsonrpc":"2.0","id":12,"method":"x_subscribe","params":[2]}`); !strings.Contains(got, `"code":-32012`) {
		t.Fatalf("third subscription: %s", got)
	}
	third := dialWS(t, h)
	if got := third.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"x_subscribe","params":[2]}`); !strings.Contains(got, `"result":"0x`) {
		t.Fatalf("another client's subscription: %s", got)
	}
	// Listeners: two methods, not three.
	if got := third.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"wsbridge_subscribe","params":["a","b","c"]}`); !strings.Contains(got, `"code":-32012`) {
		t.Fatalf("three listened methods: %s", got)
	}
	if got := third.roundTrip(`{"jsonrpc":"2.0","id":3,"method":"wsbridge_subscribe","params":["a","b"]}`); got != `{"jsonrpc":"2.0","id":3,"result":true}` {
		t.Fatalf("two listened methods: %s", got)
	}
	// A batch over the limit runs nothing.
	before := srv.Frames()
	var batch []string
	for i := range 11 {
		batch = append(batch, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"echo"}`, i))
	}
	if _, body := rpcPost(t, h, "application/json", "["+strings.Join(batch, ",")+"]"); !strings.Contains(body, `"id":null,"error":{"code":-32600`) {
		t.Fatalf("batch over the limit: %s", body)
	}
	if srv.Frames() != before {
		t.Fatal("a refused batch reached the backend")
	}
	// gRPC: the limit is per connection.
	conn := grpcConn(t, h)
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := wsbridgev1.NewBridgeServiceClient(conn).Call(ctxT(t), &wsbridgev1.CallRequest{Method: "hold"})
			errs <- err
		}()
	}
	bridgetest.Eventually(t, "the gRPC client's calls at the backend", func() bool { return h.srv.Bridge().Stats().Pending == 6 })
	if _, err := wsbridgev1.NewBridgeServiceClient(conn).Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("gRPC call over its connection's limit: %v", err)
	}
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatalf("another gRPC connection: %v", err)
	}
	if n := h.srv.counters.clientLimited.Load(); n != 2 {
		t.Fatalf("%d calls counted as over a client's limit, want 2", n)
	}
}

// subscribing is a backend that holds "hold", answers x_subscribe with a
// fresh id and everything else with its params.
func subscribing(ctx context.Context, c *bridgetest.Conn) {
	n := 0
	for {
		r, err := c.Read(ctx)
		if err != nil {
			return
		}
		switch r.Method {
		case "hold":
		case "x_subscribe":
			n++
			_ = c.Reply(ctx, r.ID, fmt.Sprintf("0x%d", n))
		default:
			_ = c.Reply(ctx, r.ID, r.Params)
		}
	}
}

func grpcConn(t *testing.T, h *harness) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(h.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecureCreds()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Finding 4: a client that never reads is ended once the bytes waiting for
// it pass ClientBufferBytes, long before the message count would; another
// client goes on receiving.
func TestHardeningClientBufferIsBoundedInBytes(t *testing.T) {
	fb := bridgetest.NewServer(t, flood)
	h := start(t, fb.URL(), func(o *Options) {
		o.ClientBuffer = 1 << 20
		o.ClientBufferBytes = 256 << 10
		o.ClientWriteTimeout = time.Hour
	})
	slow := dialWS(t, h)
	slow.send(`{"jsonrpc":"2.0","id":1,"method":"x_subscribe","params":[]}`)
	bridgetest.Eventually(t, "the slow client to be ended", func() bool {
		st, err := h.stats.GetStats(ctxT(t), nil)
		return err == nil && st.SlowConsumers == 1
	})
	if code := slow.recvClose(); code != websocket.StatusPolicyViolation {
		t.Fatalf("the slow client: %v, want 1008", code)
	}
}

// Finding 5: a cross-site "simple" request cannot run a call (REST wants
// application/json), and a Host the gateway does not serve is refused
// before anything else (DNS rebinding), on every HTTP face.
func TestHardeningCrossSiteAndRebinding(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	h := start(t, srv.URL(), nil)
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""} {
		hdr := http.Header{"Content-Type": {ct}}
		if code, _ := httpDo(t, http.MethodPost, h.base+"/v1/call", `{"method":"echo"}`, hdr); code != http.StatusUnsupportedMediaType {
			t.Errorf("REST with %q: %d, want 415", ct, code)
		}
		if code, _ := httpDo(t, http.MethodPost, h.base+"/rpc", `{"jsonrpc":"2.0","id":1,"method":"echo"}`, hdr); code != http.StatusUnsupportedMediaType {
			t.Errorf("/rpc with %q: %d, want 415", ct, code)
		}
	}
	for _, path := range []string{"/v1/call/echo", "/rpc", "/ws", "/__stats", "/v1/stats"} {
		req, _ := http.NewRequest(http.MethodPost, h.base+path, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"echo"}`))
		req.Host = "attacker.example:8080"
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("%s for a rebound host: %d, want 421", path, resp.StatusCode)
		}
	}
	if code, _ := httpDo(t, http.MethodPost, strings.Replace(h.base, "127.0.0.1", "localhost", 1)+"/v1/call/echo", `[1]`, nil); code != 200 {
		t.Errorf("localhost: %d", code)
	}
	if srv.Frames() != 1 {
		t.Fatalf("%d frames reached the backend, want localhost's one", srv.Frames())
	}
	// --allowed-hosts names the hosts to serve.
	h2 := start(t, srv.URL(), func(o *Options) { o.AllowedHosts = []string{"*.example.com"} })
	req, _ := http.NewRequest(http.MethodGet, h2.base+"/healthz", nil)
	req.Host = "api.example.com"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("an allowed host: %d", resp.StatusCode)
	}
	if code, _ := httpDo(t, http.MethodGet, h2.base+"/healthz", "", nil); code != http.StatusMisdirectedRequest {
		t.Fatalf("a host not in --allowed-hosts: %d", code)
	}
}

// Finding 6: the backend handshake does not follow a redirect (which
// could send the backend headers to another host, or in the clear); the
// dial fails naming the target in the stats.
func TestHardeningBackendRedirectIsNotFollowed(t *testing.T) {
	var mu sync.Mutex
	var leaked []string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		leaked = append(leaked, r.Header.Get("X-Api-Key"))
		mu.Unlock()
		http.Error(w, "no", http.StatusForbidden)
	}))
	t.Cleanup(target.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/elsewhere", http.StatusFound)
	}))
	t.Cleanup(redirector.Close)
	h := start(t, strings.Replace(redirector.URL, "http", "ws", 1)+"/", func(o *Options) {
		o.Bridge.Header = http.Header{"X-Api-Key": {"K"}}
	})
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("redirected backend: %v", err)
	}
	// The target is named where operators look (clients see no addresses).
	st, err := h.stats.GetStats(ctxT(t), nil)
	if err != nil || !strings.Contains(st.GetLastDialError(), "redirected the handshake to http://"+strings.TrimPrefix(target.URL, "http://")) {
		t.Fatalf("last dial error %q (%v)", st.GetLastDialError(), err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) != 0 {
		t.Fatalf("the redirect was followed, with the backend's headers: %q", leaked)
	}
}

// Finding 8: one token is tried per handshake, and the header that
// carries candidates is bounded; failures are counted.
func TestHardeningHandshakeTokenGuessing(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.Auth = tokens{"good": true} })
	wsURL := strings.Replace(h.base, "http", "ws", 1) + "/ws"
	// 2,000 candidates fit in MaxHeaderBytes (a header block past it gets
	// 431 from the HTTP server itself), not in the subprotocol bound.
	var many []string
	for i := range 2000 {
		many = append(many, fmt.Sprintf("bearer.guess%d", i))
	}
	_, resp, err := websocket.Dial(ctxT(t), wsURL, &websocket.DialOptions{Subprotocols: append(many, "bearer.good")})
	if err == nil || resp == nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("2,000 candidates: %v %v", resp, err)
	}
	_, resp, err = websocket.Dial(ctxT(t), wsURL, &websocket.DialOptions{Subprotocols: []string{"wsbridge", "bearer.bad", "bearer.good"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a second candidate was tried: %v %v", resp, err)
	}
	if n := h.srv.counters.unauthenticated.Load(); n != 2 {
		t.Fatalf("%d failures counted, want 2", n)
	}
}

// Finding 9: the allow and deny lists govern notifications too: a
// listener of "*" gets only methods clients may call, a listener of a
// method that is not allowed is refused, and the gateway's own methods
// can be denied.
func TestHardeningMethodListsGovernNotifications(t *testing.T) {
	fb := bridgetest.NewServer(t, ticking)
	h := start(t, fb.URL(), func(o *Options) {
		o.Bridge.AllowMethods = []string{"echo", "wsbridge_subscribe"}
	})
	c := dialWS(t, h)
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"wsbridge_subscribe","params":["*"]}`); got != `{"jsonrpc":"2.0","id":1,"result":true}` {
		t.Fatal(got)
	}
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"wsbridge_subscribe","params":["tick"]}`); !strings.Contains(got, `"code":-32001`) {
		t.Fatalf("listening to a method that is not allowed: %s", got)
	}
	bridgetest.Eventually(t, "ticks at the gateway", func() bool { return h.srv.Bridge().Stats().Notifications >= 10 })
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":3,"method":"echo","params":[3]}`); got != `{"jsonrpc":"2.0","id":3,"result":[3]}` {
		t.Fatalf("a notification of a method that is not allowed reached the listener: %s", got)
	}
	if n := h.srv.Bridge().Stats().Delivered; n != 0 {
		t.Fatalf("%d notifications delivered", n)
	}
	h2 := start(t, fb.URL(), func(o *Options) { o.Bridge.DenyMethods = []string{"wsbridge_*"} })
	if got := dialWS(t, h2).roundTrip(`{"jsonrpc":"2.0","id":1,"method":"wsbridge_subscribe","params":["tick"]}`); !strings.Contains(got, `"code":-32001`) {
		t.Fatalf("a denied gateway method: %s", got)
	}
}

// Finding 10: notifications the backend sends for a subscription between
// its unsubscribe and its reply belong to no one: a "*" listener does not
// get them.
func TestHardeningEndingSubscriptionIsNotBroadcast(t *testing.T) {
	fb := bridgetest.NewServer(t, bridgetest.Respond(func(r *bridgetest.Request) []bridgetest.Frame {
		switch r.Method {
		case "x_subscribe":
			return []bridgetest.Frame{bridgetest.Text(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"result":"0xdead"}`)}
		case "x_unsubscribe":
			return []bridgetest.Frame{
				bridgetest.Text(`{"jsonrpc":"2.0","method":"x_subscription","params":{"subscription":"0xdead","result":"private"}}`),
				bridgetest.Text(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"result":true}`),
			}
		}
		return []bridgetest.Frame{bridgetest.Text(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"result":null}`)}
	}))
	h := start(t, fb.URL(), nil)
	owner, listener := dialWS(t, h), dialWS(t, h)
	listener.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"wsbridge_subscribe","params":["*"]}`)
	owner.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"x_subscribe","params":[]}`)
	if got := owner.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"x_unsubscribe","params":["0xdead"]}`); got != `{"jsonrpc":"2.0","id":2,"result":true}` {
		t.Fatalf("unsubscribe: %s", got)
	}
	if got := listener.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"echo"}`); got != `{"jsonrpc":"2.0","id":2,"result":null}` {
		t.Fatalf("the listener got another client's notification: %s", got)
	}
}

// Finding 10: tokens without TLS on an address other than loopback are
// warned about at start; and the listeners offer no CBC cipher suite.
func TestHardeningTLSWarningsAndSuites(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	h := start(t, demoBackend(t), func(o *Options) {
		o.Auth = tokens{"x": true}
		o.HTTPAddr = "0.0.0.0:0"
		o.Logger = slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	})
	_ = h
	mu.Lock()
	if !strings.Contains(logs.String(), "bearer tokens are accepted without TLS") {
		t.Errorf("no warning: %s", logs.String())
	}
	mu.Unlock()

	cert, pool := selfSigned(t)
	ht := startTLS(t, demoBackend(t), &tls.Config{Certificates: []tls.Certificate{cert}})
	cbc := &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}}
	if c, err := tls.Dial("tcp", ht.srv.HTTPAddr().String(), cbc); err == nil {
		c.Close()
		t.Fatal("a CBC cipher suite was accepted")
	}
	aead := &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}
	c, err := tls.Dial("tcp", ht.srv.HTTPAddr().String(), aead)
	if err != nil {
		t.Fatalf("an AEAD suite: %v", err)
	}
	c.Close()
	_ = credentials.NewTLS
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

var _ = json.Valid

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }
