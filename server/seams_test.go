package server

// Regression tests for the defects found where one face did a thing
// differently from another (issue "one session model"). Each runs the
// server in process over real sockets, against a backend that sends what
// the test tells it to.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/statsdecl"
)

// backendCode returns the backend JSON-RPC code carried by a gRPC error.
func backendCode(t *testing.T, err error) (int64, bool) {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if be, ok := d.(*wsbridgev1.BackendError); ok {
			return be.GetCode(), true
		}
	}
	return 0, false
}

// Defect 1: a backend error with code 0 reaches every face unchanged (0
// once meant "no reply": /rpc answered 204 and /ws never replied).
func TestSeamBackendErrorCodeZero(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	zero := `"method":"fail","params":{"code":0,"message":"zero"}`

	st, got := rpcPost(t, h, "application/json", `{"jsonrpc":"2.0","id":1,`+zero+`}`)
	if st != 200 || got != `{"jsonrpc":"2.0","id":1,"error":{"code":0,"message":"zero"}}` {
		t.Fatalf("/rpc: %d %s", st, got)
	}
	st, got = rpcPost(t, h, "application/json", `[{"jsonrpc":"2.0","id":1,`+zero+`},{"jsonrpc":"2.0","id":2,"method":"echo","params":[2]}]`)
	var batch []map[string]any
	if err := json.Unmarshal([]byte(got), &batch); st != 200 || err != nil || len(batch) != 2 {
		t.Fatalf("/rpc batch: %d %s", st, got)
	}
	if got := (&wsTestClient{}).roundTripOn(t, h, `{"jsonrpc":"2.0","id":"z",`+zero+`}`); got != `{"jsonrpc":"2.0","id":"z","error":{"code":0,"message":"zero"}}` {
		t.Fatalf("/ws: %s", got)
	}
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "fail", Params: value(t, `{"code":0,"message":"zero"}`)})
	if code, ok := backendCode(t, err); status.Code(err) != codes.Unknown || !ok || code != 0 {
		t.Fatalf("gRPC: %v", err)
	}
}

// roundTripOn dials /ws, sends one frame and returns the reply.
func (*wsTestClient) roundTripOn(t *testing.T, h *harness, frame string) string {
	return dialWS(t, h).roundTrip(frame)
}

// Defect 2: a client message that is not UTF-8 is refused by the gateway
// (-32700) and never written to the backend socket, which a strict
// backend would close for everyone (1007). A binary /ws frame is served
// when it holds UTF-8 JSON-RPC; the connection stays open either way.
func TestSeamInvalidUTF8NeverReachesTheBackend(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	h := start(t, srv.URL(), nil)
	if st, got := rpcPost(t, h, "application/json", `{"jsonrpc":"2.0","id":1,"method":"echo","params":["ok"]}`); st != 200 || !strings.Contains(got, `"result":["ok"]`) {
		t.Fatalf("warm-up: %d %s", st, got)
	}
	before := srv.Frames()
	st, got := rpcPost(t, h, "application/json", "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"echo\",\"params\":[\"\xff\"]}")
	if st != 200 || !strings.Contains(got, `"id":null,"error":{"code":-32700`) {
		t.Fatalf("/rpc with a 0xff byte: %d %s", st, got)
	}
	c := dialWS(t, h)
	if err := c.conn.Write(ctxT(t), websocket.MessageBinary, []byte("{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"echo\",\"params\":[\"\xc3\x28\"]}")); err != nil {
		t.Fatal(err)
	}
	if got := c.recv(); !strings.Contains(got, `"id":null,"error":{"code":-32700`) {
		t.Fatalf("/ws binary frame that is not UTF-8: %s", got)
	}
	if err := c.conn.Write(ctxT(t), websocket.MessageBinary, []byte(`{"jsonrpc":"2.0","id":4,"method":"echo","params":["bin"]}`)); err != nil {
		t.Fatal(err)
	}
	typ, b, err := c.conn.Read(ctxT(t))
	if err != nil || typ != websocket.MessageText || string(b) != `{"jsonrpc":"2.0","id":4,"result":["bin"]}` {
		t.Fatalf("/ws binary frame of UTF-8 JSON-RPC: %v %s %v", typ, b, err)
	}
	if n := srv.Frames() - before; n != 1 {
		t.Fatalf("the backend got %d frames; want only the valid binary one", n)
	}
}

// Defect 3: a broken backend frame fails only a caller named by a
// top-level id. Ids nested in a result or in a notification's params are
// not the message's: the callers they happen to match get their own
// replies.
func TestSeamBrokenFrameBlamesOnlyATopLevelID(t *testing.T) {
	var mu sync.Mutex
	var victim json.RawMessage
	srv := bridgetest.NewServer(t, bridgetest.Respond(func(r *bridgetest.Request) []bridgetest.Frame {
		mu.Lock()
		defer mu.Unlock()
		switch r.Method {
		case "victim":
			victim = r.ID
			return nil // answered after the garbage below
		case "garbage":
			v := string(victim)
			return []bridgetest.Frame{
				bridgetest.Text(`{"jsonrpc":"2.0","method":"note","params":{"id":` + v + `,"x":`),
				bridgetest.Text(`{"jsonrpc":"2.0","result":{"id":` + v + `},"error":`),
				bridgetest.Text(`{"jsonrpc":"2.0","error":{"code":1,"message":"m","data":{"id":` + v + `}},"oops"`),
				bridgetest.Text(`{"jsonrpc":"2.0","id":` + v + `,"result":"victim's own"}`),
				bridgetest.Text(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"result":"garbage's own"}`),
			}
		case "broken":
			return []bridgetest.Frame{bridgetest.Text(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"result":{"cut`)}
		}
		return nil
	}))
	h := start(t, srv.URL(), nil)
	victimDone := make(chan error, 1)
	var victimRes *wsbridgev1.CallResponse
	go func() {
		var err error
		victimRes, err = h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "victim"})
		victimDone <- err
	}()
	bridgetest.Eventually(t, "the victim's request at the backend", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return victim != nil
	})
	c := dialWS(t, h)
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":"g","method":"garbage"}`); got != `{"jsonrpc":"2.0","id":"g","result":"garbage's own"}` {
		t.Fatalf("the caller whose frames were broken: %s", got)
	}
	if err := <-victimDone; err != nil || victimRes.GetResult().GetStringValue() != "victim's own" {
		t.Fatalf("the caller named only inside broken frames: %v %v", victimRes, err)
	}
	// A cut-off reply that names its caller at the top level fails that
	// caller at once, with INTERNAL, long before its deadline.
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "broken", Timeout: durationOf(time.Hour)})
	if status.Code(err) != codes.Internal {
		t.Fatalf("cut-off reply: %v", err)
	}
}

// subHolder is a backend whose x_subscribe replies wait for release; it
// then sends the id 0xa and one notification for it. It records the
// unsubscribes it gets.
type subHolder struct {
	subs, unsubs chan *bridgetest.Request
	release      chan struct{}
}

func newSubHolder() *subHolder {
	return &subHolder{subs: make(chan *bridgetest.Request, 10), unsubs: make(chan *bridgetest.Request, 10), release: make(chan struct{})}
}

func (b *subHolder) handler(ctx context.Context, c *bridgetest.Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		r, err := c.Read(ctx)
		if err != nil {
			return
		}
		switch r.Method {
		case "x_subscribe":
			b.subs <- r
			wg.Go(func() {
				select {
				case <-b.release:
				case <-ctx.Done():
					return
				}
				_ = c.Reply(ctx, r.ID, "0xa")
				_ = c.WriteRaw(ctx, `{"jsonrpc":"2.0","method":"x_subscription","params":{"subscription":"0xa","result":1}}`)
			})
		case "x_unsubscribe":
			b.unsubs <- r
			_ = c.Reply(ctx, r.ID, true)
		default:
			_ = c.Reply(ctx, r.ID, r.Params)
		}
	}
}

// Defect 4: a client that joins a shared subscription while its subscribe
// call is under way keeps it when the client that started the call
// leaves: it gets the id and the notifications, and the backend is not
// told to unsubscribe. On /ws and on the gRPC Session alike.
func TestSeamJoinerKeepsASharedSubscriptionWhenTheCreatorLeaves(t *testing.T) {
	t.Run("ws", func(t *testing.T) {
		b := newSubHolder()
		h := start(t, bridgetest.NewServer(t, b.handler).URL(), nil)
		creator, joiner := dialWS(t, h), dialWS(t, h)
		creator.send(`{"jsonrpc":"2.0","id":1,"method":"x_subscribe","params":["p"]}`)
		<-b.subs
		joiner.send(`{"jsonrpc":"2.0","id":7,"method":"x_subscribe","params":["p"]}`)
		bridgetest.Eventually(t, "the joiner to share the call", func() bool { return h.srv.Bridge().Stats().ClientSubscriptions == 2 })
		creator.conn.Close(websocket.StatusNormalClosure, "")
		bridgetest.Eventually(t, "the creator to be gone", func() bool { return h.srv.Bridge().Stats().ClientSubscriptions == 1 })
		close(b.release)
		if got := joiner.recv(); got != `{"jsonrpc":"2.0","id":7,"result":"0xa"}` {
			t.Fatalf("joiner's reply: %s", got)
		}
		if got := joiner.recv(); !strings.Contains(got, `"subscription":"0xa"`) {
			t.Fatalf("joiner's notification: %s", got)
		}
		assertNoUnsubscribe(t, b)
	})
	t.Run("session", func(t *testing.T) {
		b := newSubHolder()
		h := start(t, bridgetest.NewServer(t, b.handler).URL(), nil)
		creatorCtx, leave := context.WithCancel(ctxT(t))
		creator, err := h.bridge.Session(creatorCtx)
		if err != nil {
			t.Fatal(err)
		}
		joiner, err := h.bridge.Session(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		sub := func(s wsbridgev1.BridgeService_SessionClient, id string) {
			if err := s.Send(&wsbridgev1.SessionRequest{Id: id, Method: "x_subscribe", Params: value(t, `["p"]`)}); err != nil {
				t.Fatal(err)
			}
		}
		sub(creator, "1")
		<-b.subs
		sub(joiner, "7")
		bridgetest.Eventually(t, "the joiner to share the call", func() bool { return h.srv.Bridge().Stats().ClientSubscriptions == 2 })
		leave()
		bridgetest.Eventually(t, "the creator to be gone", func() bool { return h.srv.Bridge().Stats().ClientSubscriptions == 1 })
		close(b.release)
		resp, err := joiner.Recv()
		if err != nil || resp.GetReply().GetId() != "7" || resp.GetReply().GetResult().GetStringValue() != "0xa" {
			t.Fatalf("joiner's reply: %v %v", resp, err)
		}
		resp, err = joiner.Recv()
		if err != nil || resp.GetNotification().GetMethod() != "x_subscription" {
			t.Fatalf("joiner's notification: %v %v", resp, err)
		}
		assertNoUnsubscribe(t, b)
	})
}

func assertNoUnsubscribe(t *testing.T, b *subHolder) {
	t.Helper()
	select {
	case r := <-b.unsubs:
		t.Fatalf("the backend was told to unsubscribe while a client still owns it: %s", r.Raw)
	default:
	}
}

// Defect 5: faces that cannot push refuse subscription methods, as calls
// and as notifications; no client can end a subscription it does not own
// (plainly or escaped), and the owner keeps receiving.
func TestSeamSubscriptionsStayWithTheirOwner(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	owner := dialWS(t, h)
	got := owner.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"demo_subscribe","params":[20]}`)
	var reply struct{ Result string }
	if err := json.Unmarshal([]byte(got), &reply); err != nil || !strings.HasPrefix(reply.Result, "0x") {
		t.Fatalf("subscribe: %s", got)
	}
	id := reply.Result
	escaped := `"\u00` + fmt.Sprintf("%x", id[0]) + id[1:] + `"`

	// Unary faces refuse both directions.
	if st, body := httpDo(t, http.MethodPost, h.base+"/v1/call/demo_subscribe", `[20]`, nil); st != http.StatusNotImplemented {
		t.Fatalf("REST subscribe: %d %s", st, body)
	}
	if st, body := httpDo(t, http.MethodPost, h.base+"/v1/call/demo_unsubscribe", `["`+id+`"]`, nil); st != http.StatusNotImplemented {
		t.Fatalf("REST unsubscribe: %d %s", st, body)
	}
	for _, m := range []string{"demo_subscribe", "demo_unsubscribe"} {
		_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: m, Params: value(t, `["`+id+`"]`)})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("gRPC Call %s: %v", m, err)
		}
		_, err = h.bridge.Notify(ctxT(t), &wsbridgev1.NotifyRequest{Method: m, Params: value(t, `["`+id+`"]`)})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("gRPC Notify %s: %v", m, err)
		}
		if _, body := rpcPost(t, h, "application/json", `{"jsonrpc":"2.0","id":1,"method":"`+m+`","params":["`+id+`"]}`); !strings.Contains(body, `"code":-32601`) {
			t.Fatalf("/rpc %s: %s", m, body)
		}
	}
	// Another /ws client: refused plainly, escaped, and as a notification.
	other := dialWS(t, h)
	for _, frame := range []string{
		`{"jsonrpc":"2.0","id":2,"method":"demo_unsubscribe","params":["` + id + `"]}`,
		`{"jsonrpc":"2.0","id":3,"method":"demo_unsubscribe","params":[` + escaped + `]}`,
		`{"jsonrpc":"2.0","id":4,"method":"demo_unsubscribe","params":{"subscription":` + escaped + `}}`,
		`{"jsonrpc":"2.0","id":5,"method":"demo_unsubscribe","params":[]}`,
	} {
		if got := other.roundTrip(frame); !strings.Contains(got, `"error"`) {
			t.Fatalf("%s: %s", frame, got)
		}
	}
	other.send(`{"jsonrpc":"2.0","method":"demo_unsubscribe","params":["` + id + `"]}`)
	if got := other.roundTrip(`{"jsonrpc":"2.0","id":6,"method":"echo","params":[6]}`); got != `{"jsonrpc":"2.0","id":6,"result":[6]}` {
		t.Fatalf("after the notification: %s", got)
	}
	// The owner's stream goes on.
	for range 3 {
		if got := owner.recv(); !strings.Contains(got, `"method":"demo_subscription"`) || !strings.Contains(got, id) {
			t.Fatalf("owner: %s", got)
		}
	}
	st := h.srv.Bridge().Stats()
	if st.Subscriptions != 1 {
		t.Fatalf("%d subscriptions at the backend, want the owner's only", st.Subscriptions)
	}
	// The owner may end it, escaped or not.
	if got := owner.roundTrip(`{"jsonrpc":"2.0","id":9,"method":"demo_unsubscribe","params":[` + escaped + `]}`); !strings.Contains(nextNotNotification(owner, got), `"id":9,"result":true`) {
		t.Fatalf("owner's unsubscribe")
	}
	gs, err := h.stats.GetStats(ctxT(t), nil)
	if err != nil || gs.GetBackendErrors() != 0 {
		t.Fatalf("refusals counted as backend errors: %v %v", gs.GetBackendErrors(), err)
	}
}

// nextNotNotification returns got, or the next frames of c until one is
// not a notification.
func nextNotNotification(c *wsTestClient, got string) string {
	for strings.Contains(got, `"method":`) {
		got = c.recv()
	}
	return got
}

// Defect 6: a listener is demand. A lazy gateway keeps redialling while a
// listener waits, and the listener gets notifications once the backend is
// back; with --resubscribe it gets wsbridge_gap after an outage longer
// than one redial.
func TestSeamListenersKeepTheGatewayDialling(t *testing.T) {
	quick := func(o *Options) {
		o.Bridge.Backoff = bridge.Backoff{Base: 10 * time.Millisecond, Max: 20 * time.Millisecond}
	}
	waitFailures := func(t *testing.T, h *harness, n uint64) {
		t.Helper()
		from := h.srv.Bridge().Stats().DialFailures
		bridgetest.Eventually(t, "redials", func() bool { return h.srv.Bridge().Stats().DialFailures >= from+n })
	}
	t.Run("ws", func(t *testing.T) {
		srv := bridgetest.NewServer(t, ticking)
		srv.Stop()
		h := start(t, srv.URL(), quick)
		c := dialWS(t, h)
		if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"wsbridge_subscribe","params":["tick"]}`); got != `{"jsonrpc":"2.0","id":1,"result":true}` {
			t.Fatal(got)
		}
		waitFailures(t, h, 3)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if got := c.recv(); got != `{"jsonrpc":"2.0","method":"tick","params":{"n":1}}` {
			t.Fatalf("after the backend came back: %s", got)
		}
	})
	t.Run("rest", func(t *testing.T) {
		srv := bridgetest.NewServer(t, ticking)
		srv.Stop()
		h := start(t, srv.URL(), quick)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/v1/subscribe?methods=tick", nil)
		first := make(chan string, 1)
		go func() { // the response starts with the first notification
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				first <- err.Error()
				return
			}
			defer resp.Body.Close()
			buf := make([]byte, 256)
			n, err := resp.Body.Read(buf)
			first <- fmt.Sprintf("%s %v", buf[:n], err)
		}()
		waitFailures(t, h, 3)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if got := <-first; !strings.Contains(got, `"method":"tick"`) {
			t.Fatalf("after the backend came back: %s", got)
		}
	})
	t.Run("resubscribe", func(t *testing.T) {
		srv := bridgetest.NewServer(t, ticking)
		h := start(t, srv.URL(), func(o *Options) { quick(o); o.Bridge.Resubscribe = true })
		c := dialWS(t, h)
		if got := nextNotNotification(c, c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"wsbridge_subscribe","params":["tick"]}`)); got != `{"jsonrpc":"2.0","id":1,"result":true}` {
			t.Fatal(got)
		}
		if got := c.recv(); !strings.Contains(got, `"method":"tick"`) { // the link is up
			t.Fatal(got)
		}
		srv.Stop()
		waitFailures(t, h, 3)
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			got := c.recv()
			if strings.Contains(got, `"method":"wsbridge_gap"`) {
				break
			}
			if !strings.Contains(got, `"method":"tick"`) || i > 10000 {
				t.Fatalf("before the gap: %s", got)
			}
		}
		if got := c.recv(); !strings.Contains(got, `"method":"tick"`) {
			t.Fatalf("after the gap: %s", got)
		}
	})
}

// Defect 7: a reply in a binary frame fails its caller at once with
// INTERNAL instead of leaving it to its deadline.
func TestSeamBinaryReplyFailsAtOnce(t *testing.T) {
	srv := bridgetest.NewServer(t, bridgetest.Respond(func(r *bridgetest.Request) []bridgetest.Frame {
		return []bridgetest.Frame{{Binary: []byte(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"result":1}`)}}
	}))
	h := start(t, srv.URL(), nil)
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Timeout: durationOf(time.Hour)})
	if status.Code(err) != codes.Internal {
		t.Fatalf("reply in a binary frame: %v", err)
	}
}

// Defect 8: after a failed dial, readiness stays NOT_SERVING (also once
// the backoff is over and the lazy gateway waits for a call) until a dial
// succeeds. Before the first call a lazy gateway is ready.
func TestSeamReadinessFollowsTheLastDial(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	srv.Stop()
	h := start(t, srv.URL(), func(o *Options) {
		o.Bridge.Backoff = bridge.Backoff{Base: 10 * time.Millisecond, Max: 10 * time.Millisecond}
	})
	health := healthpb.NewHealthClient(h.conn)
	ready := func() healthpb.HealthCheckResponse_ServingStatus {
		resp, err := health.Check(ctxT(t), &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetStatus()
	}
	if got := ready(); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("before any call: %v", got)
	}
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("call with the backend down: %v", err)
	}
	bridgetest.Eventually(t, "NOT_SERVING", func() bool { return ready() == healthpb.HealthCheckResponse_NOT_SERVING })
	bridgetest.Eventually(t, "the backoff to end", func() bool { return h.srv.Bridge().State() == bridge.StateDisconnected })
	if got := ready(); got != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("after the backoff, with no dial since the failed one: %v", got)
	}
	if st, _ := get(t, h.base+"/healthz"); st != http.StatusServiceUnavailable {
		t.Fatalf("/healthz: %d", st)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", WaitForReady: true}); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "SERVING", func() bool { return ready() == healthpb.HealthCheckResponse_SERVING })
}

// Defect 9: the deny list uses the one matcher, whose * crosses '/' and
// '.': no method slips past it, on any face.
func TestSeamDenyListCannotBeBypassed(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	h := start(t, srv.URL(), func(o *Options) { o.Bridge.DenyMethods = []string{"admin_*", "a.b"} })
	for _, m := range []string{"admin_x", "admin_x/y", "admin_../z", "admin_*", "admin_[", `admin_\`, "admin_é", "a.b"} {
		_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: m})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("gRPC %q: %v", m, err)
		}
		mj, _ := json.Marshal(m)
		if _, body := rpcPost(t, h, "application/json", `{"jsonrpc":"2.0","id":1,"method":`+string(mj)+`}`); !strings.Contains(body, `"code":-32001`) {
			t.Errorf("/rpc %q: %s", m, body)
		}
	}
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "aXb"}); err != nil {
		t.Fatalf("'.' is itself, not any character: %v", err)
	}
	if n := srv.Frames(); n != 1 {
		t.Fatalf("%d frames reached the backend; want only aXb's", n)
	}
}

// A backend URL's path may hold a key (Infura- and Alchemy-style): clients
// and stats see scheme://host:port only.
func TestSeamBackendURLPathStaysPrivate(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	srv.Stop()
	url := "ws://" + srv.Addr() + "/v3/SECRETKEY123?apikey=QUERYSECRET"
	h := start(t, url, nil)
	_, callErr := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
	if status.Code(callErr) != codes.Unavailable {
		t.Fatal(callErr)
	}
	st, err := h.stats.GetStats(ctxT(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, seed := get(t, h.base+"/__stats")
	_, rest := get(t, h.base+"/v1/stats")
	_, metrics := get(t, h.base+"/metrics")
	for what, text := range map[string]string{"call error": callErr.Error(), "GetStats": st.String(),
		"/__stats": seed, "/v1/stats": rest, "/metrics": metrics} {
		if strings.Contains(text, "SECRETKEY123") || strings.Contains(text, "QUERYSECRET") || strings.Contains(text, "/v3") {
			t.Errorf("%s shows the URL's path or query: %s", what, text)
		}
	}
	if st.GetBackendUrl() != "ws://"+srv.Addr() {
		t.Errorf("backend URL in the stats: %q", st.GetBackendUrl())
	}
}

// A backend that does not speak JSON-RPC (a raw echo server) fails each
// call at once with INTERNAL: the frame it sends back is the call's own
// request, not a reply.
func TestSeamEchoServerIsNotABackend(t *testing.T) {
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			b, err := c.ReadRaw(ctx)
			if err != nil || c.WriteRaw(ctx, string(b)) != nil {
				return
			}
		}
	})
	h := start(t, srv.URL(), nil)
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Timeout: durationOf(time.Hour)})
	if status.Code(err) != codes.Internal || !strings.Contains(status.Convert(err).Message(), "request back") {
		t.Fatalf("call through an echo server: %v", err)
	}
	if n := h.srv.Bridge().Stats().BackendRequests; n != 1 {
		t.Fatalf("%d backend requests counted", n)
	}
}

// The refusals a session makes itself are counted like any failed
// request: a duplicate id, the per-client cap.
func TestSeamSessionRefusalsAreCounted(t *testing.T) {
	h := start(t, bridgetest.NewServer(t, nil).URL(), func(o *Options) { o.MaxInFlightPerClient = 1 })
	c := dialWS(t, h)
	before, err := h.stats.GetStats(ctxT(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.send(`{"jsonrpc":"2.0","id":1,"method":"hold"}`)
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"hold"}`); !strings.Contains(got, `"code":-32600`) {
		t.Fatalf("duplicate id: %s", got)
	}
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"hold"}`); !strings.Contains(got, `"code":-32012`) {
		t.Fatalf("over the cap: %s", got)
	}
	after, err := h.stats.GetStats(ctxT(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := after.GetErrors() - before.GetErrors(); d != 2 {
		t.Fatalf("%d errors counted for two refusals", d)
	}
	if d := after.GetRequestsHandled() - before.GetRequestsHandled(); d != 3 {
		t.Fatalf("%d requests counted for three", d)
	}
}

// At shutdown, streams that carry no calls end at the start of the drain
// with UNAVAILABLE (reason draining), and calls still running when the
// grace ends get UNAVAILABLE with a reason on every face, not a bare
// transport error or an empty HTTP reply.
func TestSeamShutdownAnswersEveryCaller(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	h := start(t, srv.URL(), func(o *Options) { o.ShutdownGrace = 300 * time.Millisecond })
	sub, err := h.bridge.Subscribe(ctxT(t), &wsbridgev1.SubscribeRequest{Methods: []string{"tick"}})
	if err != nil {
		t.Fatal(err)
	}
	grpcErr := make(chan error, 1)
	go func() {
		_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "hold"})
		grpcErr <- err
	}()
	restStatus := make(chan string, 1)
	go func() {
		st, body := httpDo(t, http.MethodPost, h.base+"/v1/call/hold", `[]`, nil)
		restStatus <- fmt.Sprint(st, " ", body)
	}()
	rpcBody := make(chan string, 1)
	go func() {
		_, body := rpcPost(t, h, "application/json", `{"jsonrpc":"2.0","id":1,"method":"hold"}`)
		rpcBody <- body
	}()
	bridgetest.Eventually(t, "three calls at the backend", func() bool { return h.srv.Bridge().Stats().Pending == 3 })
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()

	if _, err := sub.Recv(); status.Code(err) != codes.Unavailable || !strings.EqualFold(errorInfoReason(err), "draining") {
		t.Fatalf("Subscribe stream at the drain: %v", err)
	}
	if err := <-grpcErr; status.Code(err) != codes.Unavailable || !strings.EqualFold(errorInfoReason(err), "reply_lost") {
		t.Fatalf("gRPC call at the end of the grace: %v", err)
	}
	if got := <-restStatus; !strings.HasPrefix(got, "503 ") || !strings.Contains(got, "REPLY_LOST") {
		t.Fatalf("REST call at the end of the grace: %s", got)
	}
	if got := <-rpcBody; !strings.Contains(got, `"code":-32010`) || !strings.Contains(got, `"reason":"reply_lost"`) {
		t.Fatalf("/rpc call at the end of the grace: %s", got)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}

func durationOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// The stats explain failures: every error reason has a bucket (canceled
// and unavailable included), the last dial error is there with its time
// (and without the URL's path), and the latency of failures is kept apart
// from that of successes.
func TestSeamStatsExplainFailures(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	srv.Stop()
	h := start(t, "ws://"+srv.Addr()+"/secret/path", func(o *Options) {
		o.Bridge.Backoff = bridge.Backoff{Base: time.Millisecond, Max: time.Millisecond}
	})
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.Unavailable {
		t.Fatal(err)
	}
	st, err := h.stats.GetStats(ctxT(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range errorReasons() {
		if _, ok := st.GetErrorsByReason()[r]; !ok {
			t.Errorf("no bucket for %s", r)
		}
	}
	if st.GetErrorsByReason()["unavailable"] != 1 || st.GetErrors() != 1 {
		t.Fatalf("errors %d, by reason %v", st.GetErrors(), st.GetErrorsByReason())
	}
	if e := st.GetLastDialError(); !strings.Contains(e, "connect") || strings.Contains(e, "secret") || st.GetLastDialErrorAt() == nil {
		t.Fatalf("last dial error %q at %v", e, st.GetLastDialErrorAt())
	}
	if st.GetFailureLatency().GetCount() != 1 || st.GetLatency().GetCount() != 0 {
		t.Fatalf("latency %v, failure latency %v", st.GetLatency(), st.GetFailureLatency())
	}
	// A caller that gives up is counted as canceled.
	c := dialWS(t, h)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// A call fails fast while a backoff runs: wait until it is over.
	bridgetest.Eventually(t, "the backoff to end", func() bool { return h.srv.Bridge().State() != bridge.StateBackoff })
	c.send(`{"jsonrpc":"2.0","id":1,"method":"hold"}`)
	bridgetest.Eventually(t, "the call in flight", func() bool { return h.srv.Bridge().Stats().Pending == 1 })
	c.conn.Close(websocket.StatusNormalClosure, "")
	bridgetest.Eventually(t, "a canceled call", func() bool {
		st, err := h.stats.GetStats(ctxT(t), nil)
		return err == nil && st.GetErrorsByReason()["canceled"] == 1
	})
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	if st, _ := h.stats.GetStats(ctxT(t), nil); st.GetLatency().GetCount() != 1 {
		t.Fatalf("latency of successes: %v", st.GetLatency())
	}
}

// Every declared stat reaches every output: GetStats over REST, /__stats
// and /metrics.
func TestSeamEveryStatReachesEveryOutput(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	_, rest := get(t, h.base+"/v1/stats")
	_, seed := get(t, h.base+"/__stats")
	_, metrics := get(t, h.base+"/metrics")
	_, schema := get(t, h.base+"/dashboard-schema.json")
	for _, f := range statsdecl.Fields {
		if !strings.Contains(rest, `"`+f.JSON+`":`) {
			t.Errorf("/v1/stats lacks %s", f.JSON)
		}
		if !strings.Contains(seed, `"`+f.Seed+`":`) {
			t.Errorf("/__stats lacks %s", f.Seed)
		}
		if f.Metric != "" && !strings.Contains(metrics, "# HELP "+f.Metric+" ") {
			t.Errorf("/metrics lacks %s", f.Metric)
		}
		if !strings.Contains(schema, `"json":"`+f.JSON+`"`) {
			t.Errorf("the dashboard schema lacks %s", f.JSON)
		}
	}
}
