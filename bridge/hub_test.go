package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// subBackend answers *_subscribe with a fresh id "0x<n>" (optionally
// followed at once by a first notification) and *_unsubscribe with true,
// recording every request.
type subBackend struct {
	next atomic.Int64
	mu   sync.Mutex
	seen []string // "method params" of every request
}

func (sb *subBackend) requests(prefix string) []string {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	var out []string
	for _, s := range sb.seen {
		if strings.HasPrefix(s, prefix) {
			out = append(out, s)
		}
	}
	return out
}

func (sb *subBackend) handler(ctx context.Context, c *bridgetest.Conn) {
	for {
		r, err := c.Read(ctx)
		if err != nil {
			return
		}
		sb.mu.Lock()
		sb.seen = append(sb.seen, r.Method+" "+string(r.Params))
		sb.mu.Unlock()
		switch {
		case strings.HasSuffix(r.Method, "_subscribe"):
			id := fmt.Sprintf(`"0x%d"`, sb.next.Add(1))
			_ = c.WriteRaw(ctx, `{"jsonrpc":"2.0","id":`+string(r.ID)+`,"result":`+id+`}`)
			if strings.Contains(string(r.Params), "eager") {
				// The first notification follows the reply at once.
				_ = c.WriteRaw(ctx, `{"jsonrpc":"2.0","method":"x_subscription","params":{"subscription":`+id+`,"result":"first"}}`)
			}
		case strings.HasSuffix(r.Method, "_unsubscribe"):
			_ = c.Reply(ctx, r.ID, true)
		default:
			_ = c.Reply(ctx, r.ID, json.RawMessage(orNullJSON(r.Params)))
		}
	}
}

func orNullJSON(p json.RawMessage) string {
	if len(p) == 0 {
		return "null"
	}
	return string(p)
}

type note struct {
	method string
	params string
}

type recorder struct {
	*Consumer
	notes chan note
}

func newRecorder(b *Bridge) *recorder {
	r := &recorder{notes: make(chan note, 100)}
	r.Consumer = b.NewConsumer(func(method string, params json.RawMessage) {
		r.notes <- note{method, string(params)}
	})
	return r
}

func (r *recorder) next(t *testing.T) note {
	t.Helper()
	select {
	case n := <-r.notes:
		return n
	case <-time.After(10 * time.Second):
		t.Fatal("no notification")
		return note{}
	}
}

func (r *recorder) none(t *testing.T) {
	t.Helper()
	select {
	case n := <-r.notes:
		t.Fatalf("unexpected notification %v", n)
	default:
	}
}

func emit(t *testing.T, c *bridgetest.Conn, id string, result string) {
	t.Helper()
	if err := c.WriteRaw(ctxT(t), `{"jsonrpc":"2.0","method":"x_subscription","params":{"subscription":"`+id+`","result":"`+result+`"}}`); err != nil {
		t.Fatal(err)
	}
}

// sync makes sure the reader has handled every frame sent before it: the
// reply to a plain call comes after them on the same connection.
func syncReader(t *testing.T, b *Bridge) {
	t.Helper()
	if _, err := b.Call(ctxT(t), "echo", json.RawMessage(`["sync"]`), CallOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestSubscriptionsRouteToTheirOwners(t *testing.T) {
	sb := &subBackend{}
	srv := bridgetest.NewServer(t, sb.handler)
	b := startBridge(t, srv.URL(), Options{})
	a, bb, c := newRecorder(b), newRecorder(b), newRecorder(b)
	defer a.Close()
	defer bb.Close()
	defer c.Close()

	idA, err := a.Call(ctxT(t), "x_subscribe", json.RawMessage(`["a"]`), CallOptions{})
	if err != nil || string(idA) != `"0x1"` {
		t.Fatalf("subscribe a: %s %v", idA, err)
	}
	idB, err := bb.Call(ctxT(t), "x_subscribe", json.RawMessage(`["b"]`), CallOptions{})
	if err != nil || string(idB) != `"0x2"` {
		t.Fatalf("subscribe b: %s %v", idB, err)
	}
	// An identical subscription is shared: no second backend call.
	idC, err := c.Call(ctxT(t), "x_subscribe", json.RawMessage(` [ "a" ] `), CallOptions{})
	if err != nil || string(idC) != `"0x1"` {
		t.Fatalf("subscribe c: %s %v", idC, err)
	}
	if n := len(sb.requests("x_subscribe")); n != 2 {
		t.Fatalf("backend saw %d subscribe calls, want 2", n)
	}
	if st := b.Stats(); st.Subscriptions != 2 || st.Consumers != 3 {
		t.Fatalf("stats %+v", st)
	}

	conn := nextConn(t, srv)
	emit(t, conn, "0x1", "for a and c")
	emit(t, conn, "0x2", "for b")
	syncReader(t, b)
	if n := a.next(t); !strings.Contains(n.params, "for a and c") || n.method != "x_subscription" {
		t.Fatalf("a got %v", n)
	}
	if n := c.next(t); !strings.Contains(n.params, "for a and c") {
		t.Fatalf("c got %v", n)
	}
	if n := bb.next(t); !strings.Contains(n.params, "for b") {
		t.Fatalf("b got %v", n)
	}
	a.none(t)
	bb.none(t)
	c.none(t)

	// No one may cancel another client's subscription.
	if _, err := bb.Call(ctxT(t), "x_unsubscribe", json.RawMessage(`["0x1"]`), CallOptions{}); CodeOf(err) != CodeInvalidArgument {
		t.Fatalf("b unsubscribing a's subscription: %v", err)
	}
	// a leaves the shared subscription: the backend is not told, c still gets it.
	if res, err := a.Call(ctxT(t), "x_unsubscribe", json.RawMessage(`["0x1"]`), CallOptions{}); err != nil || string(res) != "true" {
		t.Fatalf("a unsubscribe: %s %v", res, err)
	}
	if n := len(sb.requests("x_unsubscribe")); n != 0 {
		t.Fatalf("backend told to unsubscribe while c still shares it")
	}
	emit(t, conn, "0x1", "only c")
	syncReader(t, b)
	if n := c.next(t); !strings.Contains(n.params, "only c") {
		t.Fatalf("c got %v", n)
	}
	a.none(t)
	// The last owner leaving unsubscribes at the backend.
	c.Close()
	bridgetest.Eventually(t, "the backend unsubscribe", func() bool { return len(sb.requests("x_unsubscribe")) == 1 })
	if got := sb.requests("x_unsubscribe")[0]; got != `x_unsubscribe ["0x1"]` {
		t.Fatalf("backend got %s", got)
	}
	if st := b.Stats(); st.Subscriptions != 1 {
		t.Fatalf("subscriptions %d, want 1", st.Subscriptions)
	}
}

func TestNotificationRightAfterTheReplyIsRouted(t *testing.T) {
	sb := &subBackend{}
	srv := bridgetest.NewServer(t, sb.handler)
	b := startBridge(t, srv.URL(), Options{})
	for i := range 50 {
		r := newRecorder(b)
		if _, err := r.Call(ctxT(t), "x_subscribe", json.RawMessage(fmt.Sprintf(`["eager",%d]`, i)), CallOptions{}); err != nil {
			t.Fatal(err)
		}
		if n := r.next(t); !strings.Contains(n.params, "first") {
			t.Fatalf("got %v", n)
		}
		r.Close()
	}
}

func TestListenedMethods(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{})
	ticks, all, deaf := newRecorder(b), newRecorder(b), newRecorder(b)
	defer ticks.Close()
	defer all.Close()
	defer deaf.Close()
	ticks.Listen("tick")
	all.Listen("*")
	syncReader(t, b)
	conn := nextConn(t, srv)
	for _, m := range []string{"tick", "other"} {
		if err := conn.WriteRaw(ctxT(t), `{"jsonrpc":"2.0","method":"`+m+`","params":[1]}`); err != nil {
			t.Fatal(err)
		}
	}
	syncReader(t, b)
	if n := ticks.next(t); n.method != "tick" {
		t.Fatalf("ticks got %v", n)
	}
	ticks.none(t)
	if a, b := all.next(t), all.next(t); a.method != "tick" || b.method != "other" {
		t.Fatalf("all got %v %v", a, b)
	}
	deaf.none(t)
	ticks.Unlisten("tick")
	if err := conn.WriteRaw(ctxT(t), `{"jsonrpc":"2.0","method":"tick","params":[2]}`); err != nil {
		t.Fatal(err)
	}
	syncReader(t, b)
	ticks.none(t)
}

func TestLossEndsSubscriptions(t *testing.T) {
	sb := &subBackend{}
	srv := bridgetest.NewServer(t, sb.handler)
	b := startBridge(t, srv.URL(), Options{})
	a, l := newRecorder(b), newRecorder(b)
	defer a.Close()
	defer l.Close()
	l.Listen("tick")
	if _, err := a.Call(ctxT(t), "x_subscribe", json.RawMessage(`["a"]`), CallOptions{}); err != nil {
		t.Fatal(err)
	}
	nextConn(t, srv).Kill()
	n := a.next(t)
	if n.method != NotifySubscriptionLost || !strings.Contains(n.params, `"subscription":"0x1"`) {
		t.Fatalf("a got %v", n)
	}
	n = l.next(t)
	if n.method != NotifySubscriptionLost || !strings.Contains(n.params, `"methods":["tick"]`) {
		t.Fatalf("listener got %v", n)
	}
	if st := b.Stats(); st.Subscriptions != 0 {
		t.Fatalf("subscriptions %d after the loss", st.Subscriptions)
	}
	if got := l.Listening(); len(got) != 0 {
		t.Fatalf("still listening to %v after the loss", got)
	}
}

func TestResubscribeAfterLoss(t *testing.T) {
	sb := &subBackend{}
	srv := bridgetest.NewServer(t, sb.handler)
	b := startBridge(t, srv.URL(), Options{Resubscribe: true, Backoff: Backoff{Base: 10 * time.Millisecond}})
	a, l := newRecorder(b), newRecorder(b)
	defer a.Close()
	defer l.Close()
	l.Listen("tick")
	if _, err := a.Call(ctxT(t), "x_subscribe", json.RawMessage(`["a"]`), CallOptions{}); err != nil {
		t.Fatal(err)
	}
	nextConn(t, srv).Kill()
	// The subscription is re-issued on a new connection without any call.
	conn := nextConn(t, srv)
	n := a.next(t) // at the loss: notifications stop, and may be missed
	if n.method != NotifyGap || !strings.Contains(n.params, `"subscription":"0x1"`) || !strings.Contains(n.params, `"reason":"backend connection lost`) {
		t.Fatalf("a got %v, want the gap first", n)
	}
	bridgetest.Eventually(t, "the subscription re-issued", func() bool { return len(sb.requests("x_subscribe")) == 2 })
	if got := sb.requests("x_subscribe"); got[1] != `x_subscribe ["a"]` {
		t.Fatalf("backend subscribe calls %v", got)
	}
	bridgetest.Eventually(t, "the subscription live again", func() bool { return b.Stats().Resubscribes == 1 })
	// The backend's new id is 0x2; a keeps seeing its own id 0x1.
	emit(t, conn, "0x2", "after")
	syncReader(t, b)
	n = a.next(t)
	if n.method != "x_subscription" || !strings.Contains(n.params, `"subscription":"0x1"`) || !strings.Contains(n.params, "after") {
		t.Fatalf("a got %v", n)
	}
	if n := l.next(t); n.method != NotifyGap || !strings.Contains(n.params, `"methods":["tick"]`) {
		t.Fatalf("listener got %v", n)
	}
	// Unsubscribing uses the backend's current id.
	if _, err := a.Call(ctxT(t), "x_unsubscribe", json.RawMessage(`["0x1"]`), CallOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := sb.requests("x_unsubscribe"); len(got) != 1 || got[0] != `x_unsubscribe ["0x2"]` {
		t.Fatalf("backend unsubscribe calls %v", got)
	}
	if st := b.Stats(); st.Resubscribes != 1 || st.Subscriptions != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSubscribePatterns(t *testing.T) {
	h := newHub(nil, hubOptions{SubscribeMethods: []string{"*_subscribe", "watch"}, UnsubscribeMethods: []string{"*_unsubscribe", "unwatch"}})
	for method, want := range map[string]string{"eth_subscribe": "eth_unsubscribe", "_subscribe": "_unsubscribe", "watch": "unwatch"} {
		if got, ok := h.unsubscribeFor(method); !ok || got != want {
			t.Errorf("%s -> %q %v, want %q", method, got, ok, want)
		}
	}
	for _, m := range []string{"eth_call", "subscribe", "eth_subscribex"} {
		if _, ok := h.unsubscribeFor(m); ok {
			t.Errorf("%s taken for a subscribe method", m)
		}
	}
	if !h.isUnsubscribe("eth_unsubscribe") || h.isUnsubscribe("eth_call") {
		t.Error("isUnsubscribe")
	}
	if err := validPatterns([]string{"a"}, nil); err == nil {
		t.Error("unpaired patterns accepted")
	}
	if err := validPatterns([]string{"*a*"}, []string{"b"}); err == nil {
		t.Error("two stars accepted")
	}
}

func TestCancelMethodTellsTheBackend(t *testing.T) {
	got := make(chan *bridgetest.Request, 10)
	srv := bridgetest.NewServer(t, bridgetest.Forward(got))
	b := startBridge(t, srv.URL(), Options{CancelMethod: "$/cancelRequest"})
	_, err := b.Call(ctxT(t), "hold", nil, CallOptions{Timeout: 20 * time.Millisecond})
	wantCode(t, err, CodeDeadlineExceeded)
	call, cancel := <-got, <-got
	if cancel.Method != "$/cancelRequest" || cancel.ID != nil || string(cancel.Params) != `{"id":`+string(call.ID)+`}` {
		t.Fatalf("backend got %s after %s", cancel.Raw, call.Raw)
	}
}

// With CallHeld, a new subscription's notifications wait until the caller
// has passed the reply on.
func TestCallHeldHoldsNotificationsUntilReleased(t *testing.T) {
	sb := &subBackend{}
	srv := bridgetest.NewServer(t, sb.handler)
	b := startBridge(t, srv.URL(), Options{})
	r := newRecorder(b)
	defer r.Close()
	id, release, err := r.CallHeld(ctxT(t), "x_subscribe", json.RawMessage(`["eager"]`), CallOptions{})
	if err != nil || string(id) != `"0x1"` {
		t.Fatalf("subscribe: %s %v", id, err)
	}
	syncReader(t, b) // the eager notification has been routed by now
	r.none(t)
	release()
	if n := r.next(t); !strings.Contains(n.params, "first") {
		t.Fatalf("after release: %v", n)
	}
}
