package bridge

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// Backends as an operator sees them (issue 20): each test failed before
// the connectivity model.

// A lazy gateway whose backend failed a dial is not ready; once the
// backend is back it is ready again with no call to try it (before, it
// stayed not ready until a call came, which a load balancer routing by
// readiness never sends).
func TestReadinessRecoversWithoutTraffic(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	srv.Stop()
	b := startBridge(t, srv.URL(), Options{Backoff: Backoff{Base: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
	if !b.Ready() {
		t.Fatal("a lazy gateway that has not dialled is not ready")
	}
	_, err := b.Call(ctxT(t), "echo", nil, CallOptions{})
	wantCode(t, err, CodeUnavailable)
	if b.Ready() {
		t.Fatal("ready after a failed dial")
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "ready again, with no call", func() bool { return b.Ready() })
	if st := b.Stats().Backends[0]; st.Connectivity != ConnReady || !st.Available {
		t.Fatalf("backend %+v", st)
	}
}

// A backend that refuses connections is not available, however long after
// its backoff: its row says why and has its own last dial error.
func TestFailingBackendIsNotAvailable(t *testing.T) {
	down := bridgetest.NewServer(t, nil)
	down.Stop()
	_, up := newNamed(t, "up")
	b := startBridge(t, "", Options{Backends: []BackendOptions{{URL: down.URL()}, {URL: up.URL(), Priority: 1}},
		Backoff: Backoff{Base: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
	if got := whoAnswers(t, b); got != "up" {
		t.Fatalf("answered by %s", got)
	}
	for range 20 { // across many backoffs and redials
		st := b.Stats().Backends[0]
		if st.Available || st.Unavailable != UnavailableFailing || st.Connectivity != ConnTransientFailure || st.LastDialError == "" || st.LastDialErrorAt.IsZero() {
			t.Fatalf("the refusing backend: %+v", st)
		}
		if st := b.Stats().Backends[1]; st.LastDialError != "" {
			t.Fatalf("the other backend's row has a dial error: %+v", st)
		}
		whoAnswers(t, b)
	}
	if !b.Ready() {
		t.Fatal("not ready while a backend is available")
	}
}

// A backend whose health call fails, or is answered with a JSON-RPC
// error, is not available, and readiness follows it.
func TestFailingHealthCallTakesReadiness(t *testing.T) {
	var healthy atomic.Bool
	srv := bridgetest.NewServer(t, bridgetest.Respond(func(r *bridgetest.Request) []bridgetest.Frame {
		if r.Method == "health" && !healthy.Load() {
			return []bridgetest.Frame{bridgetest.Text(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"error":{"code":-32601,"message":"no such method"}}`)}
		}
		return []bridgetest.Frame{bridgetest.Text(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"result":1}`)}
	}))
	b := startBridge(t, srv.URL(), Options{HealthMethod: "health", HealthInterval: 10 * time.Millisecond})
	if _, err := b.Call(ctxT(t), "echo", nil, CallOptions{}); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "not ready while the health call is answered with an error", func() bool {
		st := b.Stats().Backends[0]
		return !b.Ready() && st.Unavailable == UnavailableHealth && st.HealthError != ""
	})
	healthy.Store(true)
	bridgetest.Eventually(t, "ready once it passes", func() bool { return b.Ready() })
}

// A backend that never completes its handshake holds no call while
// another backend is connected.
func TestSlowDialHoldsNoCall(t *testing.T) {
	_, good := newNamed(t, "good")
	b := startBridge(t, "", Options{Balance: BalanceRoundRobin, DialTimeout: time.Minute,
		Backends: []BackendOptions{{URL: good.URL()}, {URL: hangingListener(t)}}})
	for i := range 50 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // the dial takes a minute
		res, err := b.Call(ctx, "who", nil, CallOptions{})
		cancel()
		if err != nil || string(res) != `"good"` {
			t.Fatalf("call %d: %s %v", i, res, err)
		}
	}
	if st := b.Stats().Backends[1]; st.State != StateConnecting {
		t.Fatalf("the hanging backend: %+v", st)
	}
}

// With MaxLag, a backend whose health value trails the highest by more
// than it gets no calls (reason lag) until it catches up.
func TestLaggingBackendGetsNoCalls(t *testing.T) {
	var headA, headB atomic.Int64
	headA.Store(1000)
	headB.Store(900)
	node := func(name string, head *atomic.Int64) *bridgetest.Server {
		return bridgetest.NewServer(t, bridgetest.Respond(func(r *bridgetest.Request) []bridgetest.Frame {
			result, _ := json.Marshal(name)
			if r.Method == "eth_blockNumber" {
				result, _ = json.Marshal("0x" + itoaHex(head.Load()))
			}
			return []bridgetest.Frame{bridgetest.Text(`{"jsonrpc":"2.0","id":` + string(r.ID) + `,"result":` + string(result) + `}`)}
		}))
	}
	a, bsrv := node("a", &headA), node("b", &headB)
	b := startBridge(t, "", Options{Balance: BalanceRoundRobin, HealthMethod: "eth_blockNumber", HealthInterval: 10 * time.Millisecond, MaxLag: 10,
		Backends: []BackendOptions{{URL: a.URL()}, {URL: bsrv.URL()}}})
	allConnected(t, b)
	bridgetest.Eventually(t, "b marked as lagging", func() bool { return b.Stats().Backends[1].Unavailable == UnavailableLag })
	for range 20 {
		if got := whoAnswers(t, b); got != "a" {
			t.Fatalf("a call went to %s, which lags", got)
		}
	}
	if st := b.Stats().Backends[1]; !st.HeadSet || st.Head != 900 {
		t.Fatalf("b's row: %+v", st)
	}
	headB.Store(995)
	bridgetest.Eventually(t, "b caught up", func() bool { return b.Stats().Backends[1].Available })
}

func itoaHex(n int64) string {
	const digits = "0123456789abcdef"
	if n == 0 {
		return "0"
	}
	var buf []byte
	for ; n > 0; n /= 16 {
		buf = append([]byte{digits[n%16]}, buf...)
	}
	return string(buf)
}

// Passive outlier detection: a backend whose requests time out several
// times in a row is ejected for a while; the calls go to the other one.
func TestOutlierEjection(t *testing.T) {
	_, good := newNamed(t, "good")
	bad, badSrv := newNamed(t, "bad")
	bad.mu.Lock()
	bad.delay = time.Minute // its "slow" never comes in time
	bad.mu.Unlock()
	b := startBridge(t, "", Options{Balance: BalanceRoundRobin, OutlierFailures: 3, OutlierEjection: time.Hour, OutlierTimeout: 20 * time.Millisecond,
		Backends: []BackendOptions{{URL: good.URL()}, {URL: badSrv.URL()}}})
	allConnected(t, b)
	// A client's own deadline, shorter than OutlierTimeout, says nothing
	// of a backend: 30 calls that give up at once eject no one (a client
	// could otherwise eject every backend but one).
	for range 30 {
		_, _ = b.Call(ctxT(t), "echo", nil, CallOptions{Timeout: time.Microsecond})
	}
	if st := b.Stats().Backends[0]; st.Ejections != 0 || !st.Available {
		t.Fatalf("short client deadlines ejected a backend: %+v", st)
	}
	for range 10 {
		_, _ = b.Call(ctxT(t), "slow", nil, CallOptions{Timeout: 50 * time.Millisecond})
	}
	st := b.Stats().Backends[1]
	if st.Ejections != 1 || st.Unavailable != UnavailableEjected {
		t.Fatalf("the slow backend: %+v", st)
	}
	if n := bad.count("slow"); n != 3 {
		t.Fatalf("the slow backend got %d requests, want 3 (then ejected)", n)
	}
	for range 10 {
		if got := whoAnswers(t, b); got != "good" {
			t.Fatalf("a call went to the ejected backend")
		}
	}
	// The last backend taking calls is never ejected.
	if st := b.Stats().Backends[0]; !st.Available {
		t.Fatalf("the good backend: %+v", st)
	}
}
