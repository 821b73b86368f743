package bridge

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// Two backends each number their subscriptions from 0x1: a client that
// holds one on each still sees two ids, gets each one's notifications
// under its own id, and ends the one it names.
func TestSubscriptionIDsAreUniquePerClient(t *testing.T) {
	sa, sb := &subBackend{}, &subBackend{}
	srvA, srvB := bridgetest.NewServer(t, sa.handler), bridgetest.NewServer(t, sb.handler)
	b := startBridge(t, "", Options{Backends: []BackendOptions{{URL: srvA.URL()}, {URL: srvB.URL()}}, Balance: BalanceRoundRobin})
	r := newRecorder(b)
	defer r.Close()
	allConnected(t, b)
	var ids []string
	for _, p := range []string{`["a"]`, `["b"]`} {
		res, err := r.Call(ctxT(t), "x_subscribe", json.RawMessage(p), CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, string(res))
	}
	if len(sa.requests("x_subscribe")) != 1 || len(sb.requests("x_subscribe")) != 1 {
		t.Fatalf("subscribes: %v and %v; want one on each backend", sa.requests("x_subscribe"), sb.requests("x_subscribe"))
	}
	if ids[0] == ids[1] {
		t.Fatalf("both subscriptions have the id %s", ids[0])
	}
	// Each backend sends under its own id "0x1"; each arrives under the id
	// its subscribe answered.
	connA, connB := nextConn(t, srvA), nextConn(t, srvB)
	emit(t, connA, "0x1", "from a")
	syncReader(t, b) // (round-robin: this sync goes to one backend...)
	syncReader(t, b) // (...and this one to the other)
	emit(t, connB, "0x1", "from b")
	syncReader(t, b)
	syncReader(t, b)
	got := map[string]string{}
	for range 2 {
		n := r.next(t)
		var p struct {
			Subscription json.RawMessage
			Result       string
		}
		if err := json.Unmarshal([]byte(n.params), &p); err != nil {
			t.Fatal(err)
		}
		got[p.Result] = string(p.Subscription)
	}
	aID, bID := ids[0], ids[1]
	if strings.Contains(sa.requests("x_subscribe")[0], `"b"`) {
		aID, bID = bID, aID
	}
	if got["from a"] != aID || got["from b"] != bID {
		t.Fatalf("notifications %v; subscriptions a=%s b=%s", got, aID, bID)
	}
	// Ending b's subscription by the id the client knows reaches b alone.
	if _, err := r.Call(ctxT(t), "x_unsubscribe", json.RawMessage(`[`+bID+`]`), CallOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := sb.requests("x_unsubscribe"); len(got) != 1 || !strings.Contains(got[0], `"0x1"`) {
		t.Fatalf("backend b unsubscribes %v", got)
	}
	if got := sa.requests("x_unsubscribe"); len(got) != 0 {
		t.Fatalf("backend a unsubscribes %v", got)
	}
}

// With Resubscribe, listeners whose backend is lost move to another one
// that is already connected, and are told first that they may have missed
// notifications.
func TestListenersMovedToAConnectedBackendGetAGap(t *testing.T) {
	srvA, srvB := bridgetest.NewServer(t, nil), bridgetest.NewServer(t, nil)
	b := startBridge(t, "", Options{Backends: []BackendOptions{{URL: srvA.URL()}, {URL: srvB.URL()}},
		Balance: BalanceRoundRobin, Resubscribe: true})
	r := newRecorder(b)
	defer r.Close()
	if err := r.Listen("tick"); err != nil {
		t.Fatal(err)
	}
	allConnected(t, b)
	connA, connB := nextConn(t, srvA), nextConn(t, srvB)
	if err := connA.WriteRaw(ctxT(t), `{"jsonrpc":"2.0","method":"tick","params":["a"]}`); err != nil {
		t.Fatal(err)
	}
	if n := r.next(t); n.method != "tick" || n.params != `["a"]` {
		t.Fatalf("got %v", n)
	}
	srvA.Stop() // the listen backend is lost
	// Ticks from b reach listeners once they have moved there (until then
	// they are no one's: b was not the listen backend).
	tickB := func() {
		if err := connB.WriteRaw(ctxT(t), `{"jsonrpc":"2.0","method":"tick","params":["b"]}`); err != nil {
			t.Fatal(err)
		}
		for range 2 { // one of them goes to b, after the tick (a may still take one as it dies)
			_, _ = b.Call(ctxT(t), "echo", json.RawMessage(`["sync"]`), CallOptions{})
		}
	}
	for len(r.notes) == 0 {
		tickB()
	}
	if n := r.next(t); n.method != NotifyGap || !strings.Contains(n.params, `"tick"`) {
		t.Fatalf("first after the move: %v, want %s", n, NotifyGap)
	}
	tickB()
	if n := r.next(t); n.method != "tick" || n.params != `["b"]` {
		t.Fatalf("then %v", n)
	}
}
