package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

type wsTestClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func dialWS(t *testing.T, h *harness) *wsTestClient {
	t.Helper()
	conn, _, err := websocket.Dial(ctxT(t), strings.Replace(h.base, "http://", "ws://", 1)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadLimit(-1)
	t.Cleanup(func() { conn.CloseNow() })
	return &wsTestClient{t: t, conn: conn}
}

func (c *wsTestClient) send(frame string) {
	c.t.Helper()
	if err := c.conn.Write(ctxT(c.t), websocket.MessageText, []byte(frame)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *wsTestClient) recv() string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := c.conn.Read(ctx)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return string(b)
}

// recvClose reads until the connection ends and returns its close status.
func (c *wsTestClient) recvClose() websocket.StatusCode {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if _, _, err := c.conn.Read(ctx); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

func (c *wsTestClient) roundTrip(frame string) string {
	c.t.Helper()
	c.send(frame)
	return c.recv()
}

func TestWSIDsRoundTripByteForByte(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	c := dialWS(t, h)
	for _, id := range []string{`1`, `"1"`, `1.5`, `null`, `18446744073709551616`, `-0`, `1e3`, `"\u00e9\n"`,
		`"` + strings.Repeat("x", 4096) + `"`, `9223372036854775808`, `0.1000000000000000055511151231257827`} {
		got := c.roundTrip(`{"jsonrpc":"2.0","id":` + id + `,"method":"echo","params":["p"]}`)
		want := `{"jsonrpc":"2.0","id":` + id + `,"result":["p"]}`
		if got != want {
			t.Errorf("id %.40s: got %.200s", id, got)
		}
	}
}

func TestWSClientsWithTheSameIDGetTheirOwnReplies(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			c := dialWS(t, h)
			for j := range 20 {
				nonce := fmt.Sprintf("client%d-call%d", i, j)
				got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo","params":["` + nonce + `"]}`)
				if got != `{"jsonrpc":"2.0","id":1,"result":["`+nonce+`"]}` {
					t.Errorf("client %d got %s", i, got)
				}
			}
		})
	}
	wg.Wait()
	st, _ := h.stats.GetStats(ctxT(t), nil)
	if st.WsUpgrades != 20 || st.RequestsHandled != 400 {
		t.Fatalf("stats %v", st)
	}
}

func TestWSDuplicateIDInFlight(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	c := dialWS(t, h)
	c.send(`{"jsonrpc":"2.0","id":7,"method":"sleep","params":[200]}`)
	got := c.roundTrip(`{"jsonrpc":"2.0","id":7,"method":"echo","params":[1]}`)
	if !strings.Contains(got, `"id":7`) || !strings.Contains(got, `"code":-32600`) {
		t.Fatalf("duplicate: %s", got)
	}
	if got := c.recv(); got != `{"jsonrpc":"2.0","id":7,"result":{"slept_ms":200}}` {
		t.Fatalf("original: %s", got)
	}
	// Once answered, the id is free again.
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":7,"method":"echo","params":[2]}`); got != `{"jsonrpc":"2.0","id":7,"result":[2]}` {
		t.Fatalf("reuse: %s", got)
	}
}

func TestWSRepliesOutOfOrder(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	c := dialWS(t, h)
	c.send(`{"jsonrpc":"2.0","id":"slow","method":"sleep","params":[300]}`)
	c.send(`{"jsonrpc":"2.0","id":"fast","method":"echo","params":[1]}`)
	if got := c.recv(); !strings.Contains(got, `"fast"`) {
		t.Fatalf("first reply %s, want the fast one", got)
	}
	if got := c.recv(); !strings.Contains(got, `"slow"`) {
		t.Fatalf("second reply %s", got)
	}
}

func TestWSBatches(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	c := dialWS(t, h)
	got := c.roundTrip(`[{"jsonrpc":"2.0","id":"a","method":"sleep","params":[100]},` +
		`{"jsonrpc":"2.0","method":"echo","params":[0]},` +
		`{"jsonrpc":"2.0","id":2,"method":"add","params":[1,2]},` +
		`{"foo":1},` +
		`{"jsonrpc":"2.0","id":3,"method":"fail","params":{"code":-32000,"message":"nope","data":[1]}}]`)
	var replies []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(got), &replies); err != nil {
		t.Fatalf("batch reply %s: %v", got, err)
	}
	if len(replies) != 4 {
		t.Fatalf("batch reply has %d entries, want 4 (the notification gets none): %s", len(replies), got)
	}
	byID := map[string]map[string]json.RawMessage{}
	for _, r := range replies {
		byID[string(r["id"])] = r
	}
	if string(byID[`2`]["result"]) != `3` || string(byID[`"a"`]["result"]) != `{"slept_ms":100}` ||
		!strings.Contains(string(byID[`null`]["error"]), "-32600") ||
		string(byID[`3`]["error"]) != `{"code":-32000,"message":"nope","data":[1]}` {
		t.Fatalf("batch replies %s", got)
	}
	// The slow call finished last, so it is last: replies are in completion order.
	if string(replies[3]["id"]) != `"a"` {
		t.Fatalf("completion order: %s", got)
	}
	// Only notifications: no reply at all; the next reply is the next call's.
	c.send(`[{"jsonrpc":"2.0","method":"echo","params":[1]},{"jsonrpc":"2.0","method":"echo","params":[2]}]`)
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":"next","method":"echo"}`); got != `{"jsonrpc":"2.0","id":"next","result":null}` {
		t.Fatalf("after a notifications-only batch: %s", got)
	}
	// An empty batch: one error object, not an array.
	if got := c.roundTrip(`[]`); got != `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request: empty batch"}}` {
		t.Fatalf("empty batch: %s", got)
	}
}

func TestWSBadInput(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	c := dialWS(t, h)
	for frame, code := range map[string]string{
		`{"jsonrpc":"2.0","id":1,"method":`: `"id":null,"error":{"code":-32700`,
		`not json`:                          `"id":null,"error":{"code":-32700`,
		`{"foo":1}`:                         `"id":null,"error":{"code":-32600`,
		`{"jsonrpc":"1.0","id":1,"method":"echo"}`:            `"id":1,"error":{"code":-32600`,
		`{"jsonrpc":"2.0","id":1,"method":5}`:                 `"id":1,"error":{"code":-32600`,
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":3}`: `"id":1,"error":{"code":-32600`,
		`{"jsonrpc":"2.0","id":{},"method":"echo"}`:           `"id":null,"error":{"code":-32600`,
		`42`:                              `"id":null,"error":{"code":-32600`,
		`[` + strings.Repeat(`[`, 100000): `"id":null,"error":{"code":-32700`,
	} {
		if got := c.roundTrip(frame); !strings.Contains(got, code) {
			t.Errorf("%.40s: got %s, want %s", frame, got, code)
		}
	}
	// Still open after all that.
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`); got != `{"jsonrpc":"2.0","id":1,"result":[1]}` {
		t.Fatalf("after bad input: %s", got)
	}
	// Invalid UTF-8 in a text frame closes with 1007.
	c.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":[\"\xff\"]}")
	if code := c.recvClose(); code != websocket.StatusInvalidFramePayloadData {
		t.Fatalf("close %v, want 1007", code)
	}
}

func TestWSGatewayErrors(t *testing.T) {
	fb := bridgetest.NewServer(t, bridgetest.Forward(nil))
	h := start(t, fb.URL(), func(o *Options) { o.Bridge.CallTimeout = 100 * time.Millisecond })
	c := dialWS(t, h)
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"hold"}`); !strings.Contains(got, `"code":-32015`) {
		t.Fatalf("timeout: %s", got)
	}
	fb.Stop()
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"hold"}`); !strings.Contains(got, `"code":-32010`) {
		t.Fatalf("backend down: %s", got)
	}
}

func TestWSDisconnectAbandonsCalls(t *testing.T) {
	got := make(chan *bridgetest.Request, 10)
	fb := bridgetest.NewServer(t, bridgetest.Forward(got))
	h := start(t, fb.URL(), nil)
	c := dialWS(t, h)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"hold"}`)
	r := <-got
	c.conn.CloseNow()
	bridgetest.Eventually(t, "the call to be abandoned", func() bool {
		st := h.srv.Bridge().Stats()
		return st.Pending == 0 && st.InFlight == 0
	})
	backendConn := <-fb.Conns
	if err := backendConn.Reply(ctxT(t), r.ID, "late"); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "the late reply to be counted", func() bool { return h.srv.Bridge().Stats().Late == 1 })
	st, _ := h.stats.GetStats(ctxT(t), nil)
	if !st.BackendConnected || st.BackendConnects != 1 {
		t.Fatalf("the backend socket was disturbed: %v", st)
	}
	bridgetest.Eventually(t, "the client to be gone", func() bool {
		st, _ := h.stats.GetStats(ctxT(t), nil)
		return st.WsClients == 0
	})
}

// flood answers x_subscribe with an id and then sends 1 KiB notifications
// for it as fast as it can; anything else is echoed.
func flood(ctx context.Context, c *bridgetest.Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	payload := strings.Repeat("x", 1024)
	for {
		r, err := c.Read(ctx)
		if err != nil {
			return
		}
		if r.Method != "x_subscribe" && r.Method != "x_flood" {
			_ = c.Reply(ctx, r.ID, r.Params)
			continue
		}
		_ = c.Reply(ctx, r.ID, "0xf")
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				if c.WriteRaw(ctx, `{"jsonrpc":"2.0","method":"x_subscription","params":{"subscription":"0xf","result":"`+payload+`"}}`) != nil {
					return
				}
			}
		})
	}
}

func TestWSSlowConsumerIsClosedAlone(t *testing.T) {
	fb := bridgetest.NewServer(t, flood)
	h := start(t, fb.URL(), func(o *Options) { o.ClientBuffer = 4; o.ClientWriteTimeout = 200 * time.Millisecond })
	slow, fine := dialWS(t, h), dialWS(t, h)
	// The slow client subscribes to a flood and never reads.
	slow.send(`{"jsonrpc":"2.0","id":1,"method":"x_subscribe","params":[]}`)
	bridgetest.Eventually(t, "the slow client to be dropped", func() bool {
		st, _ := h.stats.GetStats(ctxT(t), nil)
		return st.SlowConsumers == 1 && st.WsClients == 1
	})
	if got := fine.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`); got != `{"jsonrpc":"2.0","id":1,"result":[1]}` {
		t.Fatalf("other client: %s", got)
	}
	// The slow client, reading again, finds the connection closed; 1008 if
	// the close frame could still be written, else a plain drop.
	if code := slow.recvClose(); code != websocket.StatusPolicyViolation && code != -1 {
		t.Fatalf("slow client closed with %v, want 1008", code)
	}
	if st, _ := h.stats.GetStats(ctxT(t), nil); st.SlowConsumers != 1 {
		t.Fatalf("slow consumers %d, want 1", st.SlowConsumers)
	}
}

func TestWSSubscriptionsGoToTheirOwner(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	a, b := dialWS(t, h), dialWS(t, h)
	idA := a.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"demo_subscribe","params":[20]}`)
	idB := b.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"demo_subscribe","params":[30]}`)
	subA := strings.TrimSuffix(strings.SplitN(idA, `"result":`, 2)[1], "}")
	subB := strings.TrimSuffix(strings.SplitN(idB, `"result":`, 2)[1], "}")
	if subA == subB {
		t.Fatalf("different subscriptions share id %s", subA)
	}
	for range 5 {
		if got := a.recv(); !strings.Contains(got, `"subscription":`+subA) {
			t.Fatalf("a got %s", got)
		}
		if got := b.recv(); !strings.Contains(got, `"subscription":`+subB) {
			t.Fatalf("b got %s", got)
		}
	}
}

func TestWSListenToMethods(t *testing.T) {
	ln := demoBackendWith(t, 10*time.Millisecond)
	h := start(t, ln, nil)
	listener, other := dialWS(t, h), dialWS(t, h)
	if got := listener.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"wsbridge_subscribe","params":["tick"]}`); got != `{"jsonrpc":"2.0","id":1,"result":true}` {
		t.Fatalf("listen: %s", got)
	}
	// Any call opens the backend connection; ticks then flow.
	other.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo"}`)
	for range 3 {
		if got := listener.recv(); !strings.Contains(got, `"method":"tick"`) {
			t.Fatalf("listener got %s", got)
		}
	}
	if got := other.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"echo","params":["only mine"]}`); got != `{"jsonrpc":"2.0","id":2,"result":["only mine"]}` {
		t.Fatalf("a client that did not listen got %s", got)
	}
}

func TestWSShutdownSendsGoingAway(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	c := dialWS(t, h)
	c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo"}`)
	go h.stop()
	if code := c.recvClose(); code != websocket.StatusGoingAway {
		t.Fatalf("close %v, want 1001", code)
	}
	// New upgrades are refused while the gateway goes away.
	resp, err := http.Get(h.base + "/ws")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("upgrade during shutdown: %d", resp.StatusCode)
		}
	}
}

// A client that stops reading answers no pings: it is closed.
func TestWSClientThatStopsReadingIsClosed(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) {
		o.ClientPingInterval = 20 * time.Millisecond
		o.ClientWriteTimeout = 50 * time.Millisecond
	})
	c := dialWS(t, h)
	c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo"}`)
	bridgetest.Eventually(t, "the silent client to be closed", func() bool {
		st, _ := h.stats.GetStats(ctxT(t), nil)
		return st.WsClients == 0
	})
	if code := c.recvClose(); code != websocket.StatusPolicyViolation {
		t.Fatalf("close %v, want 1008", code)
	}
}

// At shutdown a /ws client's calls in flight are answered before its 1001,
// and a call it sends meanwhile is refused with -32010, never started: a
// call without a reply at the 1001 was never passed to the backend.
func TestWSGoesAwayOnceAnswered(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.ShutdownGrace = 10 * time.Second })
	c := dialWS(t, h)
	c.roundTrip(`{"jsonrpc":"2.0","id":0,"method":"echo"}`)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"sleep","params":[300]}`)
	bridgetest.Eventually(t, "the call in flight", func() bool { return h.srv.Bridge().Stats().Pending == 1 })
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	bridgetest.Eventually(t, "the client to be told to go away", func() bool {
		h.srv.sessMu.Lock()
		defer h.srv.sessMu.Unlock()
		for ss := range h.srv.sessions {
			ss.mu.Lock()
			going := ss.goingAway
			ss.mu.Unlock()
			if going {
				return true
			}
		}
		return false
	})
	bridgetest.Eventually(t, "the gateway to refuse calls", h.srv.refusing.Load)
	c.send(`{"jsonrpc":"2.0","id":2,"method":"echo","params":["late"]}`)
	if got := c.recv(); !strings.Contains(got, `"id":2,"error":{"code":-32010`) || !strings.Contains(got, `"data":{"reason":"draining"}`) {
		t.Fatalf("the call sent while going away: %s", got)
	}
	if got := c.recv(); got != `{"jsonrpc":"2.0","id":1,"result":{"slept_ms":300}}` {
		t.Fatalf("the call in flight: %s", got)
	}
	if code := c.recvClose(); code != websocket.StatusGoingAway {
		t.Fatalf("close %v, want 1001", code)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// During ShutdownDelay readiness is NOT_SERVING but calls are served on
// every face, so that load balancers can take the replica out first.
func TestShutdownDelayKeepsServing(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.ShutdownDelay = 2 * time.Second })
	c := dialWS(t, h)
	c.roundTrip(`{"jsonrpc":"2.0","id":0,"method":"echo"}`)
	watch, err := healthpb.NewHealthClient(h.conn).Watch(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before: %v %v", r, err)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health at shutdown: %v %v", r, err)
	}
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatalf("gRPC call during the shutdown delay: %v", err)
	}
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`); got != `{"jsonrpc":"2.0","id":1,"result":[1]}` {
		t.Fatalf("/ws call during the shutdown delay: %s", got)
	}
	if code := c.recvClose(); code != websocket.StatusGoingAway {
		t.Fatalf("close %v, want 1001", code)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

// At shutdown an HTTP keep-alive connection carries one more request,
// answered with Connection: close, rather than being closed under a request
// a proxy may be sending on it.
func TestShutdownClosesKeepAliveAfterAReply(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.ConnDrain = 10 * time.Second })
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	post := func() *http.Response {
		resp, err := client.Post(h.base+"/rpc", "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != `{"jsonrpc":"2.0","id":1,"result":[1]}` {
			t.Fatalf("HTTP %d %s", resp.StatusCode, b)
		}
		return resp
	}
	if resp := post(); resp.Close {
		t.Fatal("Connection: close before shutdown")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	bridgetest.Eventually(t, "the gateway to stop taking connections", h.srv.stopping.Load)
	if resp := post(); !resp.Close {
		t.Fatal("a reply during shutdown kept the connection open")
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
