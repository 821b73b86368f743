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

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// named is a backend that answers "who" with its name, holds "hold",
// answers "slow" after delay, and echoes the rest; it counts the requests
// it reads by method.
type named struct {
	name  string
	delay time.Duration
	mu    sync.Mutex
	seen  map[string]int
}

func newNamed(t *testing.T, name string) (*named, *bridgetest.Server) {
	n := &named{name: name, seen: map[string]int{}}
	return n, bridgetest.NewServer(t, n.handler)
}

func (n *named) count(method string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.seen[method]
}

func (n *named) handler(ctx context.Context, c *bridgetest.Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		r, err := c.Read(ctx)
		if err != nil {
			return
		}
		n.mu.Lock()
		n.seen[r.Method]++
		delay := n.delay
		n.mu.Unlock()
		if r.ID == nil {
			continue
		}
		switch r.Method {
		case "hold":
		case "who":
			_ = c.Reply(ctx, r.ID, n.name)
		case "slow", "sleep":
			wg.Go(func() {
				d := delay
				if r.Method == "sleep" {
					d = 300 * time.Millisecond
				}
				select {
				case <-time.After(d):
					_ = c.Reply(ctx, r.ID, n.name)
				case <-ctx.Done():
				}
			})
		default:
			_ = c.Reply(ctx, r.ID, json.RawMessage(orNullJSON(r.Params)))
		}
	}
}

func whoAnswers(t *testing.T, b *Bridge) string {
	t.Helper()
	res, err := b.Call(ctxT(t), "who", nil, CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var name string
	_ = json.Unmarshal(res, &name)
	return name
}

// Priority: calls go to the lowest priority value; the standby is not
// dialled until the primary is unavailable, then takes the calls.
func TestBackendsPriorityFailover(t *testing.T) {
	_, primary := newNamed(t, "primary")
	_, standby := newNamed(t, "standby")
	b := startBridge(t, "", Options{Backoff: Backoff{Base: time.Hour}, Backends: []BackendOptions{
		{URL: standby.URL(), Priority: 1}, {URL: primary.URL(), Priority: 0}}})
	for range 5 {
		if got := whoAnswers(t, b); got != "primary" {
			t.Fatalf("answered by %s", got)
		}
	}
	if standby.Accepted() != 0 {
		t.Fatal("the standby was dialled while the primary was fine")
	}
	primary.Stop()
	bridgetest.Eventually(t, "the primary's loss to be seen", func() bool { return b.Stats().Backends[1].State != StateConnected })
	if got := whoAnswers(t, b); got != "standby" {
		t.Fatalf("with the primary down, answered by %s", got)
	}
	st := b.Stats()
	if st.Backends[0].Connects != 1 || st.Backends[1].TransportErrors == 0 {
		t.Fatalf("per-backend stats: %+v", st.Backends)
	}
}

// Round-robin shares calls by weight; least-inflight goes around a backend
// that holds calls.
func TestBackendsBalance(t *testing.T) {
	a, sa := newNamed(t, "a")
	c, sc := newNamed(t, "c")
	b := startBridge(t, "", Options{Balance: BalanceRoundRobin, Backends: []BackendOptions{{URL: sa.URL(), Weight: 3}, {URL: sc.URL(), Weight: 1}}})
	// Until both are connected, the calls the balance gives c go to a
	// while c dials (a dial holds no call another backend can serve).
	allConnected(t, b)
	fromA, fromC := a.count("who"), c.count("who")
	for range 40 {
		whoAnswers(t, b)
	}
	if a.count("who")-fromA != 30 || c.count("who")-fromC != 10 {
		t.Fatalf("round-robin 3:1 sent %d and %d", a.count("who")-fromA, c.count("who")-fromC)
	}

	x, sx := newNamed(t, "x")
	y, sy := newNamed(t, "y")
	lb := startBridge(t, "", Options{Balance: BalanceLeastInFlight, Backends: []BackendOptions{{URL: sx.URL()}, {URL: sy.URL()}}})
	allConnected(t, lb)
	// x gets held calls: new calls go to y.
	for range 3 {
		go func() { _, _ = lb.Call(context.Background(), "hold", nil, CallOptions{Timeout: time.Minute}) }()
	}
	bridgetest.Eventually(t, "held calls", func() bool { return x.count("hold")+y.count("hold") == 3 })
	heavy := "x"
	if y.count("hold") > x.count("hold") {
		heavy = "y"
	}
	for range 5 {
		if got := whoAnswers(t, lb); got == heavy {
			t.Fatalf("least-inflight sent a call to %s, which holds more", got)
		}
	}
}

// A retryable call written when its connection broke is sent once more to
// the other backend; a call that is not retryable fails with reply_lost.
func TestBackendsRetryOnAnotherBackend(t *testing.T) {
	n1, s1 := newNamed(t, "one")
	n2, s2 := newNamed(t, "two")
	n1.delay, n2.delay = time.Hour, 0
	b := startBridge(t, "", Options{Backoff: Backoff{Base: time.Hour}, Backends: []BackendOptions{{URL: s1.URL()}, {URL: s2.URL(), Priority: 1}},
		Methods: []MethodPolicy{{Pattern: "slow", Retry: true}}})
	whoAnswers(t, b) // one is connected
	retried := make(chan error, 1)
	go func() {
		res, err := b.Call(ctxT(t), "slow", nil, CallOptions{})
		if err == nil && string(res) != `"two"` {
			err = fmt.Errorf("answered %s", res)
		}
		retried <- err
	}()
	notRetried := make(chan error, 1)
	go func() { _, err := b.Call(ctxT(t), "hold", nil, CallOptions{}); notRetried <- err }()
	bridgetest.Eventually(t, "both calls at backend one", func() bool { return n1.count("slow") == 1 && n1.count("hold") == 1 })
	s1.Stop()
	if err := <-retried; err != nil {
		t.Fatalf("retryable call: %v", err)
	}
	wantCode(t, <-notRetried, CodeReplyLost)
	if st := b.Stats(); st.Retries != 1 {
		t.Fatalf("%d retries counted", st.Retries)
	}
}

// Identical concurrent calls become one backend request; a cached reply
// answers without one.
func TestBackendsDedupAndCache(t *testing.T) {
	n, srv := newNamed(t, "only")
	b := startBridge(t, srv.URL(), Options{Methods: []MethodPolicy{{Pattern: "sleep", Dedup: true}, {Pattern: "echo", CacheTTL: time.Hour}}})
	var wg sync.WaitGroup
	var ok atomic.Int64
	for range 200 {
		wg.Go(func() {
			if res, err := b.Call(ctxT(t), "sleep", json.RawMessage(`{"ms": 300}`), CallOptions{}); err == nil && string(res) == `"only"` {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 200 || n.count("sleep") != 1 {
		t.Fatalf("%d of 200 callers answered; the backend saw %d requests", ok.Load(), n.count("sleep"))
	}
	if st := b.Stats(); st.Coalesced != 199 {
		t.Fatalf("%d calls counted as coalesced", st.Coalesced)
	}
	// A caller that leaves does not end the call for the others.
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := b.Call(ctx, "sleep", json.RawMessage(`[2]`), CallOptions{}); first <- err }()
	bridgetest.Eventually(t, "the first call at the backend", func() bool { return n.count("sleep") == 2 })
	second := make(chan error, 1)
	go func() { _, err := b.Call(ctxT(t), "sleep", json.RawMessage(`[2]`), CallOptions{}); second <- err }()
	bridgetest.Eventually(t, "the second to join", func() bool { return b.Stats().Coalesced == 200 })
	cancel()
	wantCode(t, <-first, CodeCanceled)
	if err := <-second; err != nil {
		t.Fatalf("the caller that stayed: %v", err)
	}
	for range 3 {
		if _, err := b.Call(ctxT(t), "echo", json.RawMessage(`[ 1 ]`), CallOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if n.count("echo") != 1 || b.Stats().CacheHits != 2 {
		t.Fatalf("echo reached the backend %d times, %d cache hits", n.count("echo"), b.Stats().CacheHits)
	}
}

// A hedged call that the first backend does not answer in time is sent to
// the other; the first answer wins and the slow call is abandoned.
func TestBackendsHedging(t *testing.T) {
	slow, s1 := newNamed(t, "slow")
	_, s2 := newNamed(t, "fast")
	slow.delay = time.Hour
	b := startBridge(t, "", Options{Backends: []BackendOptions{{URL: s1.URL()}, {URL: s2.URL(), Priority: 1}},
		Methods: []MethodPolicy{{Pattern: "slow", HedgeAfter: 20 * time.Millisecond}}, CancelMethod: "$/cancelRequest"})
	res, err := b.Call(ctxT(t), "slow", nil, CallOptions{})
	if err != nil || string(res) != `"fast"` {
		t.Fatalf("hedged call: %s %v", res, err)
	}
	st := b.Stats()
	if st.Hedges != 1 {
		t.Fatalf("%d hedges", st.Hedges)
	}
	bridgetest.Eventually(t, "the abandoned call to leave the pending table", func() bool { return b.Stats().Pending == 0 })
	// The slow backend is told to stop working on the abandoned copy.
	bridgetest.Eventually(t, "the cancel notification", func() bool { return slow.count("$/cancelRequest") == 1 })
}

// An idle connection is closed after IdleTimeout and the next call dials
// again; a subscription keeps it open.
func TestBackendsIdleClose(t *testing.T) {
	_, srv := newNamed(t, "only")
	b := startBridge(t, srv.URL(), Options{IdleTimeout: 40 * time.Millisecond})
	whoAnswers(t, b)
	bridgetest.Eventually(t, "the idle close", func() bool { return b.Stats().Backends[0].IdleCloses == 1 })
	if st := b.Stats(); st.State != StateDisconnected || st.Reconnects != 0 {
		t.Fatalf("after the idle close: %v, %d reconnects", st.State, st.Reconnects)
	}
	whoAnswers(t, b)
	if st := b.Stats(); st.Connects != 2 {
		t.Fatalf("%d connects", st.Connects)
	}
}

// A backend that goes away on purpose (1001) is redialled at once, lazy
// or not, and not held against it.
func TestBackendsGoingAwayRedialsAtOnce(t *testing.T) {
	var conns atomic.Int64
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		if conns.Add(1) == 1 {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			_ = c.Reply(ctx, r.ID, "first")
			_ = c.Close(websocket.StatusGoingAway, "restarting")
			return
		}
		bridgetest.Echo(ctx, c)
	})
	b := startBridge(t, srv.URL(), Options{Backoff: Backoff{Base: time.Hour}})
	if _, err := b.Call(ctxT(t), "x", nil, CallOptions{}); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "the replacement dialled without a call", func() bool { return b.Stats().Connects == 2 })
	if _, err := b.Call(ctxT(t), "echo", json.RawMessage(`[1]`), CallOptions{}); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Backends[0].TransportErrors != 0 || st.Backends[0].Breaker != BreakerClosed {
		t.Fatalf("a going-away close counted as a failure: %+v", st.Backends[0])
	}
}

// Transport failures in a row open a backend's breaker: it gets no calls
// until the cooldown ends (its failed dials go on in the background, so
// that its state becomes true again without calls).
func TestBackendsBreaker(t *testing.T) {
	_, bad := newNamed(t, "bad")
	bad.Stop()
	_, good := newNamed(t, "good")
	b := startBridge(t, "", Options{BreakerFailures: 2, BreakerCooldown: time.Hour, Backoff: Backoff{Base: time.Millisecond, Max: time.Millisecond},
		Backends: []BackendOptions{{URL: bad.URL()}, {URL: good.URL(), Priority: 1}}})
	bridgetest.Eventually(t, "the breaker to open", func() bool {
		if got := whoAnswers(t, b); got != "good" {
			t.Fatalf("answered by %s", got)
		}
		return b.Stats().Backends[0].BreakerOpens == 1
	})
	before := b.Stats().Backends[0]
	for range 20 {
		if got := whoAnswers(t, b); got != "good" {
			t.Fatalf("answered by %s", got)
		}
	}
	st := b.Stats()
	if st.Backends[0].Breaker != BreakerOpen || st.Backends[0].Available || st.Backends[0].RequestsOut != 0 || before.DialFailures < 2 {
		t.Fatalf("the bad backend: %+v (before the 20 calls: %+v)", st.Backends[0], before)
	}
}

// A backend whose health call fails gets no calls.
func TestBackendsHealthCall(t *testing.T) {
	sick, s1 := newNamed(t, "sick")
	_, s2 := newNamed(t, "well")
	b := startBridge(t, "", Options{HealthMethod: "hold", HealthInterval: 10 * time.Millisecond, HealthTimeout: 10 * time.Millisecond,
		Backends: []BackendOptions{{URL: s1.URL()}, {URL: s2.URL(), Priority: 1}}})
	if got := whoAnswers(t, b); got != "sick" {
		t.Fatalf("first call answered by %s", got)
	}
	bridgetest.Eventually(t, "the failed health call", func() bool { return !b.Stats().Backends[0].Available })
	if got := whoAnswers(t, b); got != "well" {
		t.Fatalf("answered by %s", got)
	}
	if sick.count("hold") == 0 || !strings.Contains(b.Stats().Backends[0].HealthError, "deadline") {
		t.Fatalf("health: %+v", b.Stats().Backends[0])
	}
}

// A wait-for-ready call among several backends waits for any backend, not
// for the one it picked: with the primary's handshake hanging, the call
// goes to the standby at the end of the first dial. And when none is up,
// it waits until one comes (here the standby, started late).
func TestBackendsWaitForReadyTakesAnyBackend(t *testing.T) {
	t.Run("the picked one hangs", func(t *testing.T) {
		hung := hangingListener(t)
		_, standby := newNamed(t, "standby")
		b := startBridge(t, "", Options{DialTimeout: 100 * time.Millisecond, Backoff: Backoff{Base: time.Hour},
			Backends: []BackendOptions{{URL: hung}, {URL: standby.URL(), Priority: 1}}})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res, err := b.Call(ctx, "who", nil, CallOptions{WaitForReady: true})
		if err != nil || string(res) != `"standby"` {
			t.Fatalf("%s %v", res, err)
		}
	})
	t.Run("none is up yet", func(t *testing.T) {
		_, first := newNamed(t, "first")
		_, second := newNamed(t, "second")
		first.Stop()
		second.Stop()
		b := startBridge(t, "", Options{Backoff: Backoff{Base: 10 * time.Millisecond, Max: 20 * time.Millisecond},
			Backends: []BackendOptions{{URL: first.URL()}, {URL: second.URL()}}})
		done := make(chan error, 1)
		go func() {
			_, err := b.Call(ctxT(t), "who", nil, CallOptions{WaitForReady: true})
			done <- err
		}()
		bridgetest.Eventually(t, "both backends to fail a dial", func() bool {
			st := b.Stats()
			return st.Backends[0].DialFailures > 0 && st.Backends[1].DialFailures > 0
		})
		if err := second.Start(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// hangingListener accepts TCP connections and never answers on them (a
// handshake to it hangs); it returns its ws:// URL.
func hangingListener(t *testing.T) string {
	t.Helper()
	l := newSwitchListener(t)
	l.hang()
	return l.url()
}

// The reply cache is bounded in entries and in bytes: the oldest entry
// goes first, and a reply over a tenth of the byte bound is not kept.
func TestBackendsCacheBounds(t *testing.T) {
	n, srv := newNamed(t, "only")
	b := startBridge(t, srv.URL(), Options{CacheMaxEntries: 2, CacheMaxBytes: 1000,
		Methods: []MethodPolicy{{Pattern: "echo", CacheTTL: time.Hour}}})
	call := func(params string) {
		t.Helper()
		if _, err := b.Call(ctxT(t), "echo", json.RawMessage(params), CallOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{`[1]`, `[2]`, `[3]`} {
		call(p)
	}
	call(`[3]`) // kept
	call(`[1]`) // evicted by [3]: asked again
	if got := n.count("echo"); got != 4 {
		t.Fatalf("the backend saw %d echo requests, want 4 (three, then the evicted one)", got)
	}
	big := `["` + strings.Repeat("x", 200) + `"]` // over 1000/10 bytes
	call(big)
	call(big)
	if got := n.count("echo"); got != 6 {
		t.Fatalf("the backend saw %d echo requests, want 6: a reply over the size bound was cached", got)
	}
	if hits := b.Stats().CacheHits; hits != 1 {
		t.Fatalf("%d cache hits, want 1", hits)
	}
}

// allConnected makes calls until every backend of b is connected: a
// backend's first dial is kicked by a call the balance gives it, and the
// call goes to a connected backend meanwhile.
func allConnected(t *testing.T, b *Bridge) {
	t.Helper()
	bridgetest.Eventually(t, "every backend connected", func() bool {
		_, _ = b.Call(ctxT(t), "echo", nil, CallOptions{})
		for _, be := range b.Stats().Backends {
			if be.State != StateConnected {
				return false
			}
		}
		return true
	})
}
