package bridge

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// Regression tests of the call pipeline (issue 18): each failed on the
// code before the pipeline was one.

// A deduplicated call's joiners keep their own deadlines: a joiner with a
// short timeout ends at it while the flight goes on for the others, and a
// first caller's short timeout decides nothing for a joiner with a longer
// one. The backend gets one request either way.
func TestDedupJoinersKeepTheirOwnDeadlines(t *testing.T) {
	n, srv := newNamed(t, "only") // "sleep" answers after 300 ms
	b := startBridge(t, srv.URL(), Options{Methods: []MethodPolicy{{Pattern: "sleep", Dedup: true}}})
	whoAnswers(t, b) // the connection is open

	for _, tc := range []struct {
		name                  string
		first, joiner         time.Duration // CallOptions.Timeout; 0: none
		wantFirst, wantJoiner Code          // 0: the result
	}{
		{"joiner with the shorter deadline", 0, 100 * time.Millisecond, 0, CodeDeadlineExceeded},
		{"first caller with the shorter deadline", 100 * time.Millisecond, 0, CodeDeadlineExceeded, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := n.count("sleep")
			first, _ := goCall(b, "sleep", `[1]`, CallOptions{Timeout: tc.first})
			bridgetest.Eventually(t, "the first request at the backend", func() bool { return n.count("sleep") == before+1 })
			coalesced := b.Stats().Coalesced
			joiner, _ := goCall(b, "sleep", `[1]`, CallOptions{Timeout: tc.joiner})
			bridgetest.Eventually(t, "the second call joining the first", func() bool { return b.Stats().Coalesced == coalesced+1 })
			check := func(who string, o goOutcome, want Code) {
				t.Helper()
				if want == 0 {
					if o.err != nil || string(o.res) != `"only"` {
						t.Errorf("%s: %s %v, want the result", who, o.res, o.err)
					}
					return
				}
				if CodeOf(o.err) != want {
					t.Errorf("%s: %v, want %v", who, o.err, want)
				}
			}
			check("first", <-first, tc.wantFirst)
			check("joiner", <-joiner, tc.wantJoiner)
			if got := n.count("sleep"); got != before+1 {
				t.Errorf("the backend got %d requests, want 1", got-before)
			}
		})
	}
	bridgetest.Eventually(t, "nothing in flight", func() bool { st := b.Stats(); return st.InFlight == 0 && st.Pending == 0 })
}

// A joiner's wait-for-ready holds even when the flight it joined was
// started by a caller without it: the first fails fast when the dial
// fails, the joiner waits and gets the result once the backend answers.
func TestDedupJoinerKeepsItsWaitForReady(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{
		Methods:     []MethodPolicy{{Pattern: "echo", Dedup: true}},
		DialTimeout: 200 * time.Millisecond,
		Backoff:     Backoff{Base: 50 * time.Millisecond, Jitter: -1},
	})
	srv.HoldHandshakes() // dials time out
	first, _ := goCall(b, "echo", `["x"]`, CallOptions{Timeout: 10 * time.Second})
	bridgetest.Eventually(t, "the dial", func() bool { return b.State() == StateConnecting })
	joiner, _ := goCall(b, "echo", `["x"]`, CallOptions{Timeout: 10 * time.Second, WaitForReady: true})
	bridgetest.Eventually(t, "the second call joining the first", func() bool { return b.Stats().Coalesced == 1 })
	wantCode(t, (<-first).err, CodeUnavailable)
	select {
	case o := <-joiner:
		t.Fatalf("the wait-for-ready joiner ended with the first caller: %s %v", o.res, o.err)
	default:
	}
	srv.ReleaseHandshakes()
	if o := <-joiner; o.err != nil || string(o.res) != `["x"]` {
		t.Fatalf("joiner: %s %v", o.res, o.err)
	}
}

// After its breaker's cooldown one dial probes a backend, and no call
// waits for it while another backend is ready: every call goes to the
// other backend at once. (Before, half of them went to the probed backend
// and waited for its dial.)
func TestHalfOpenBreakerLetsOneCallProbe(t *testing.T) {
	// The primary drops every connection as soon as it is open: a lost
	// connection opens its breaker (a failed dial would make it fail and
	// redial in the background instead).
	flaky := bridgetest.NewServer(t, func(_ context.Context, c *bridgetest.Conn) { c.Kill() })
	_, good := newNamed(t, "good")
	b := startBridge(t, "", Options{
		Backends:        []BackendOptions{{URL: flaky.URL(), Priority: 0}, {URL: good.URL(), Priority: 1}},
		BreakerFailures: 1, BreakerCooldown: 100 * time.Millisecond,
		Backoff:     Backoff{Base: 10 * time.Millisecond, Jitter: -1},
		DialTimeout: time.Minute,
	})
	_, _ = b.Call(ctxT(t), "who", nil, CallOptions{}) // dials the primary, which drops it
	deadline := time.Now().Add(10 * time.Second)
	for st := b.Stats().Backends[0]; st.BreakerOpens == 0 || st.Breaker != BreakerHalfOpen || st.State != StateDisconnected; st = b.Stats().Backends[0] {
		if time.Now().After(deadline) {
			t.Fatalf("the breaker is not half-open: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
	flaky.HoldHandshakes() // from now on a handshake to the primary never completes
	defer flaky.ReleaseHandshakes()

	const calls = 8
	out := make(chan goOutcome, calls)
	for range calls {
		go func() {
			res, err := b.Call(ctxT(t), "who", nil, CallOptions{Timeout: time.Minute})
			out <- goOutcome{res, err}
		}()
	}
	for range calls {
		select {
		case o := <-out:
			if o.err != nil || string(o.res) != `"good"` {
				t.Fatalf("%s %v", o.res, o.err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("calls wait for the probe's dial instead of going to the other backend")
		}
	}
	if st := b.Stats().Backends[0]; st.State != StateConnecting || st.Breaker != BreakerHalfOpen {
		t.Fatalf("the probe's dial is not under way: %+v", st)
	}
}

// switchListener refuses handshakes (closes each connection at once)
// until hang, then accepts connections and never answers on them.
type switchListener struct {
	ln       net.Listener
	hung     atomic.Bool
	accepted atomic.Int64
}

func newSwitchListener(t *testing.T) *switchListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &switchListener{ln: ln}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var held []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.accepted.Add(1)
			if !l.hung.Load() {
				c.Close()
				continue
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range held {
			c.Close()
		}
	})
	return l
}

func (l *switchListener) url() string { return "ws://" + l.ln.Addr().String() + "/" }
func (l *switchListener) hang()       { l.hung.Store(true) }

// A hedged call that times out counts one timeout; a retried call whose
// reply is lost again says so.
func TestEveryCallIsCountedOnceAndToldTheTruth(t *testing.T) {
	t.Run("hedged timeout", func(t *testing.T) {
		_, a := newNamed(t, "a")
		_, c := newNamed(t, "c")
		b := startBridge(t, "", Options{
			Backends: []BackendOptions{{URL: a.URL()}, {URL: c.URL()}},
			Methods:  []MethodPolicy{{Pattern: "hold", HedgeAfter: 10 * time.Millisecond}},
		})
		_, err := b.Call(ctxT(t), "hold", nil, CallOptions{Timeout: 200 * time.Millisecond})
		wantCode(t, err, CodeDeadlineExceeded)
		if st := b.Stats(); st.Hedges != 1 || st.Timeouts != 1 {
			t.Fatalf("hedges %d, timeouts %d; want 1 and 1", st.Hedges, st.Timeouts)
		}
	})
	t.Run("reply lost twice", func(t *testing.T) {
		kill := func(ctx context.Context, c *bridgetest.Conn) {
			for {
				r, err := c.Read(ctx)
				if err != nil {
					return
				}
				if r.Method == "who" {
					_ = c.Reply(ctx, r.ID, "x")
					continue
				}
				c.Kill() // the reply is lost
				return
			}
		}
		a := bridgetest.NewServer(t, kill)
		c := bridgetest.NewServer(t, kill)
		b := startBridge(t, "", Options{
			Backends: []BackendOptions{{URL: a.URL()}, {URL: c.URL()}},
			Methods:  []MethodPolicy{{Pattern: "lose", Retry: true}},
		})
		whoAnswers(t, b)
		whoAnswers(t, b) // both connections open
		_, err := b.Call(ctxT(t), "lose", nil, CallOptions{})
		wantCode(t, err, CodeReplyLost)
		if strings.Contains(err.Error(), "not retried") {
			t.Errorf("the message says the call was not retried; it was: %v", err)
		}
		if st := b.Stats(); st.Retries != 1 {
			t.Errorf("retries %d, want 1", st.Retries)
		}
	})
}

// Every call made with Go ends, however short its deadline: the deadline
// is armed only once the call is registered, so it never fires into
// nothing (and leaves the call without a deadline).
func TestGoCallsWithTinyDeadlinesAllEnd(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{MaxInFlight: 1 << 20})
	warm, _ := goCall(b, "echo", `[]`, CallOptions{}) // the connection is open
	if o := <-warm; o.err != nil {
		t.Fatal(o.err)
	}
	const calls = 50000
	var ended atomic.Int64
	var wrong atomic.Value
	all := make(chan struct{})
	for range calls {
		b.Go("hold", nil, CallOptions{Timeout: time.Nanosecond}, func(_ json.RawMessage, err error) {
			if CodeOf(err) != CodeDeadlineExceeded {
				wrong.Store(err)
			}
			if ended.Add(1) == calls {
				close(all)
			}
		})
	}
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		t.Fatalf("%d of %d calls never ended (in flight %d)", calls-ended.Load(), calls, b.Stats().InFlight)
	}
	if err := wrong.Load(); err != nil {
		t.Fatalf("a call ended with %v", err)
	}
	if st := b.Stats(); st.InFlight != 0 || st.Timeouts != calls {
		t.Fatalf("in flight %d, timeouts %d", st.InFlight, st.Timeouts)
	}
}
