package bridge

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// statsURLs lists the stats' backend rows.
func statsURLs(b *Bridge) []string {
	var out []string
	for _, be := range b.Stats().Backends {
		out = append(out, be.URL)
	}
	return out
}

// A reload adds a backend (it takes calls at once, and has its row) and
// removes one: the call the removed one holds is still answered by it,
// no call goes to it from the reload on, and once its calls are over its
// connection closes and its row leaves the stats.
func TestSetBackendsAddsAndDrainsRemoved(t *testing.T) {
	a, sa := newNamed(t, "a")
	a.delay = 300 * time.Millisecond
	_, sb := newNamed(t, "b")
	b := startBridge(t, "", Options{Balance: BalanceRoundRobin, Backends: []BackendOptions{{URL: sa.URL()}}})
	if got := whoAnswers(t, b); got != "a" {
		t.Fatalf("answered by %s", got)
	}
	connA := nextConn(t, sa)
	slow := make(chan string, 1)
	go func() {
		res, err := b.Call(ctxT(t), "slow", nil, CallOptions{})
		if err != nil {
			slow <- err.Error()
			return
		}
		slow <- string(res)
	}()
	bridgetest.Eventually(t, "the slow call at a", func() bool { return a.count("slow") == 1 })

	ch, err := b.SetBackends([]BackendOptions{{URL: sb.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Added) != 1 || len(ch.Removed) != 1 || len(ch.Reweighted) != 0 {
		t.Fatalf("changes %+v", ch)
	}
	for range 5 {
		if got := whoAnswers(t, b); got != "b" {
			t.Fatalf("after the reload, answered by %s", got)
		}
	}
	if rows := statsURLs(b); len(rows) != 2 || b.URL() != DisplayURL(sb.URL()) {
		t.Fatalf("while a drains: rows %v, URL %s", rows, b.URL())
	}
	if got := <-slow; got != `"a"` {
		t.Fatalf("the call a held got %s; want a's answer", got)
	}
	select {
	case <-connA.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the removed backend's connection stayed open after its calls")
	}
	bridgetest.Eventually(t, "a's row gone", func() bool { return len(statsURLs(b)) == 1 })
	if rows := statsURLs(b); rows[0] != DisplayURL(sb.URL()) {
		t.Fatalf("rows %v", rows)
	}
	if a.count("who") != 1 {
		t.Fatalf("a got %d who after its removal", a.count("who")-1)
	}
}

// A reload that changes only priorities keeps the connections and moves
// the calls: the new primary takes them.
func TestSetBackendsReweights(t *testing.T) {
	_, sa := newNamed(t, "a")
	_, sb := newNamed(t, "b")
	b := startBridge(t, "", Options{Backends: []BackendOptions{{URL: sa.URL(), Priority: 0}, {URL: sb.URL(), Priority: 1}}})
	if got := whoAnswers(t, b); got != "a" {
		t.Fatalf("answered by %s", got)
	}
	ch, err := b.SetBackends([]BackendOptions{{URL: sa.URL(), Priority: 1}, {URL: sb.URL(), Priority: 0}})
	if err != nil || len(ch.Reweighted) != 2 || len(ch.Added)+len(ch.Removed) != 0 {
		t.Fatalf("changes %+v, %v", ch, err)
	}
	bridgetest.Eventually(t, "b takes the calls", func() bool { return whoAnswers(t, b) == "b" })
	for range 5 {
		if got := whoAnswers(t, b); got != "b" {
			t.Fatalf("answered by %s", got)
		}
	}
	if sa.Accepted() != 1 {
		t.Fatalf("a was dialled %d times: a reweight must keep its connection", sa.Accepted())
	}
	if ch, err := b.SetBackends([]BackendOptions{{URL: sa.URL(), Priority: 1}, {URL: sb.URL(), Priority: 0}}); err != nil || !ch.Empty() {
		t.Fatalf("the same set again: %v, %v", ch, err)
	}
	if _, err := b.SetBackends(nil); err == nil {
		t.Fatal("a reload to no backend was taken")
	}
	if _, err := b.SetBackends([]BackendOptions{{URL: "http://x"}}); err == nil {
		t.Fatal("a reload to a bad URL was taken")
	}
}

// The one backend is replaced while a call waits for its dial (it does
// not answer handshakes): the call goes to the new backend.
func TestSetBackendsMovesCallsWaitingForARemovedBackend(t *testing.T) {
	_, sa := newNamed(t, "a")
	sa.HoldHandshakes()
	_, sb := newNamed(t, "b")
	b := startBridge(t, "", Options{Backends: []BackendOptions{{URL: sa.URL()}}})
	got := make(chan string, 1)
	go func() {
		res, err := b.Call(ctxT(t), "who", nil, CallOptions{})
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(res)
	}()
	bridgetest.Eventually(t, "the dial of a", func() bool { return b.Stats().Backends[0].Connectivity == ConnConnecting })
	if _, err := b.SetBackends([]BackendOptions{{URL: sb.URL()}}); err != nil {
		t.Fatal(err)
	}
	if res := <-got; res != `"b"` {
		t.Fatalf("the waiting call got %s", res)
	}
	sa.ReleaseHandshakes()
}

// With Resubscribe, a removed backend's subscriptions and listeners hear
// wsbridge_gap when it closes and carry on at the backend that stays.
func TestSetBackendsMovesSubscriptions(t *testing.T) {
	sa, sb := &subBackend{}, &subBackend{}
	srvA, srvB := bridgetest.NewServer(t, sa.handler), bridgetest.NewServer(t, sb.handler)
	b := startBridge(t, "", Options{Backends: []BackendOptions{{URL: srvA.URL()}, {URL: srvB.URL(), Priority: 1}}, Resubscribe: true})
	r := newRecorder(b)
	defer r.Close()
	res, err := r.Call(ctxT(t), "x_subscribe", json.RawMessage(`["a"]`), CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Listen("tick"); err != nil {
		t.Fatal(err)
	}
	if len(sa.requests("x_subscribe")) != 1 {
		t.Fatalf("subscribes at a: %v", sa.requests("x_subscribe"))
	}
	connA := nextConn(t, srvA)
	if _, err := b.SetBackends([]BackendOptions{{URL: srvB.URL()}}); err != nil {
		t.Fatal(err)
	}
	<-connA.Done()
	gaps := map[string]bool{}
	for len(gaps) < 2 {
		n := r.next(t)
		if n.method != NotifyGap {
			t.Fatalf("got %v; want the gaps first", n)
		}
		if strings.Contains(n.params, `"tick"`) {
			gaps["tick"] = true
		} else if strings.Contains(n.params, string(res)) {
			gaps["sub"] = true
		}
	}
	bridgetest.Eventually(t, "the subscription again at b", func() bool { return len(sb.requests("x_subscribe")) == 1 })
	connB := nextConn(t, srvB)
	bridgetest.Eventually(t, "the resubscription live", func() bool { return b.Stats().Resubscribes == 1 })
	emit(t, connB, "0x1", "from b")
	if err := connB.WriteRaw(ctxT(t), `{"jsonrpc":"2.0","method":"tick","params":["b"]}`); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"x_subscription": false, "tick": false}
	for range 2 {
		n := r.next(t)
		if _, ok := want[n.method]; !ok || !strings.Contains(n.params, "b") {
			t.Fatalf("got %v", n)
		}
		if n.method == "x_subscription" && !strings.Contains(n.params, string(res)) {
			t.Fatalf("the subscription's notification %s lost its id %s", n.params, res)
		}
		want[n.method] = true
	}
}
