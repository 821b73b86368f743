package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// newBridge returns a Bridge to srv, closed at the end of the test.
func startBridge(t *testing.T, url string, opts Options) *Bridge {
	t.Helper()
	opts.URL = url
	if opts.Logger == nil && testing.Verbose() {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// quickRedial makes connections that live a few milliseconds count as
// healthy, so that a test's next call redials at once after a loss.
var quickRedial = Backoff{Base: time.Microsecond, Max: time.Microsecond}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, err error, code Code) *Error {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want an *Error with code %v", err, err, code)
	}
	if e.Code != code {
		t.Fatalf("code %v (%v), want %v", e.Code, err, code)
	}
	return e
}

func nextConn(t *testing.T, srv *bridgetest.Server) *bridgetest.Conn {
	t.Helper()
	select {
	case c := <-srv.Conns:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no backend connection")
		return nil
	}
}

func TestCallEcho(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{})
	for _, params := range []string{`{"a":1}`, `[1,"x",null]`, ``} {
		res, err := b.Call(ctxT(t), "echo", json.RawMessage(params), CallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := params
		if want == "" {
			want = "null"
		}
		if string(res) != want {
			t.Fatalf("result %s, want %s", res, want)
		}
	}
	// The writer counts a message once Write returns, which may be after
	// the reply was routed.
	bridgetest.Eventually(t, "3 messages out", func() bool { return b.Stats().MessagesOut == 3 })
	st := b.Stats()
	if st.Connects != 1 || st.MessagesOut != 3 || st.MessagesIn != 3 || st.State != StateConnected || st.ConnsOpen != 1 {
		t.Fatalf("stats %+v", st)
	}
	if st.Latency.Count != 3 {
		t.Fatalf("latency count %d, want 3", st.Latency.Count)
	}
}

func TestInvalidCalls(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{})
	_, err := b.Call(ctxT(t), "", nil, CallOptions{})
	wantCode(t, err, CodeInvalidArgument)
	_, err = b.Call(ctxT(t), "echo", json.RawMessage(`42`), CallOptions{})
	wantCode(t, err, CodeInvalidArgument)
	if srv.Accepted() != 0 {
		t.Fatal("an invalid call dialled the backend")
	}
}

func TestLazyDial(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{})
	if st := b.Stats(); st.State != StateDisconnected || st.Connects != 0 {
		t.Fatalf("before any call: %+v", st)
	}
	if srv.Accepted() != 0 {
		t.Fatal("dialled before the first call")
	}
	if _, err := b.Call(ctxT(t), "echo", nil, CallOptions{}); err != nil {
		t.Fatal(err)
	}
	if srv.Accepted() != 1 {
		t.Fatalf("accepted %d, want 1", srv.Accepted())
	}
}

func TestEagerDial(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{Eager: true})
	nextConn(t, srv)
	bridgetest.Eventually(t, "connected", func() bool { return b.Stats().State == StateConnected })
	if st := b.Stats(); st.Connects != 1 {
		t.Fatalf("connects %d, want 1", st.Connects)
	}
}

func TestSingleFlightDial(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	srv.HoldHandshakes()
	b := startBridge(t, srv.URL(), Options{})
	const n = 100
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := b.Call(ctxT(t), "echo", json.RawMessage(fmt.Sprintf("[%d]", i)), CallOptions{})
			errs <- err
		}()
	}
	// Every caller is waiting while the one dial is held in its handshake.
	bridgetest.Eventually(t, "100 callers waiting on the dial", func() bool {
		st := b.Stats()
		return st.InFlight == n && st.State == StateConnecting
	})
	srv.ReleaseHandshakes()
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if st := b.Stats(); st.Connects != 1 || srv.Accepted() != 1 {
		t.Fatalf("connects %d, accepted %d; want exactly one dial", st.Connects, srv.Accepted())
	}
}

func TestPoolRoundRobin(t *testing.T) {
	var mu sync.Mutex
	perConn := map[*bridgetest.Conn]int{}
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			mu.Lock()
			perConn[c]++
			mu.Unlock()
			_ = c.Reply(ctx, r.ID, "ok")
		}
	})
	b := startBridge(t, srv.URL(), Options{Conns: 3})
	for range 30 {
		if _, err := b.Call(ctxT(t), "x", nil, CallOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(perConn) != 3 || srv.Accepted() != 3 {
		t.Fatalf("%d connections (%d accepted), want 3", len(perConn), srv.Accepted())
	}
	for _, n := range perConn {
		if n != 10 {
			t.Fatalf("calls per connection %v, want 10 each", perConn)
		}
	}
	if st := b.Stats(); st.Connects != 3 || st.ConnsOpen != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLossFailsWrittenCallsAtOnce(t *testing.T) {
	srv := bridgetest.NewServer(t, bridgetest.Forward(nil))
	b := startBridge(t, srv.URL(), Options{Backoff: quickRedial})
	const n = 500
	type outcome struct {
		err     error
		elapsed time.Duration
	}
	out := make(chan outcome, n)
	var killed atomic.Int64 // unix nanos of the kill
	for range n {
		go func() {
			_, err := b.Call(ctxT(t), "hold", nil, CallOptions{})
			out <- outcome{err, time.Duration(time.Now().UnixNano() - killed.Load())}
		}()
	}
	c := nextConn(t, srv)
	bridgetest.Eventually(t, "all requests to reach the backend", func() bool { return srv.Frames() == n })
	killed.Store(time.Now().UnixNano())
	c.Kill()
	for range n {
		o := <-out
		e := wantCode(t, o.err, CodeReplyLost)
		if !strings.Contains(e.Error(), "reply was lost") {
			t.Fatalf("message %q does not say the reply was lost", e.Error())
		}
		if o.elapsed > time.Second {
			t.Fatalf("a call ended %v after the loss, want within 1s", o.elapsed)
		}
		if st := b.Stats(); st.State == StateConnected {
			t.Fatal("a caller saw the loss before the Bridge stopped reporting connected")
		}
	}
	if st := b.Stats(); st.InFlight != 0 || st.Pending != 0 {
		t.Fatalf("after the loss: %+v", st)
	}
	// The next call redials, and a dial after a loss is a reconnect.
	srv2Conn := make(chan struct{})
	go func() { nextConn(t, srv); close(srv2Conn) }()
	_, err := b.Call(ctxT(t), "hold", nil, CallOptions{Timeout: 10 * time.Millisecond})
	wantCode(t, err, CodeDeadlineExceeded)
	<-srv2Conn
	if st := b.Stats(); st.Connects != 2 || st.Reconnects != 1 {
		t.Fatalf("connects %d reconnects %d, want 2 and 1", st.Connects, st.Reconnects)
	}
}

func TestCloseFrameFromBackendIsALoss(t *testing.T) {
	srv := bridgetest.NewServer(t, bridgetest.Forward(nil))
	b := startBridge(t, srv.URL(), Options{})
	errc := make(chan error, 1)
	go func() { _, err := b.Call(ctxT(t), "hold", nil, CallOptions{}); errc <- err }()
	c := nextConn(t, srv)
	bridgetest.Eventually(t, "the request", func() bool { return srv.Frames() == 1 })
	go c.Close(websocket.StatusGoingAway, "restarting")
	wantCode(t, <-errc, CodeReplyLost)
}

// A backend that stops reading makes the writer block; requests queued
// behind it were never written and must go out on the next connection,
// while those written fail and are not resent.
func TestQueuedCallsAreSentOnNextConnection(t *testing.T) {
	var first atomic.Bool
	first.Store(true)
	seen := make(chan *bridgetest.Request, 1000)
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		if first.CompareAndSwap(true, false) {
			<-ctx.Done() // never read: TCP buffers fill and the writer blocks
			return
		}
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			seen <- r
			_ = c.Reply(ctx, r.ID, "ok")
		}
	})
	b := startBridge(t, srv.URL(), Options{Backoff: quickRedial, PingInterval: -1, WriteTimeout: time.Minute, MaxMessageBytes: 8 << 20})
	big := json.RawMessage(`["` + strings.Repeat("x", 1<<20) + `"]`)
	const n = 40
	errs := make(chan error, n)
	for range n {
		go func() { _, err := b.Call(ctxT(t), "big", big, CallOptions{}); errs <- err }()
	}
	c1 := nextConn(t, srv)
	var queued int
	bridgetest.Eventually(t, "requests queued behind a blocked writer", func() bool {
		cn := b.slot(0).snapshot().conn
		if cn == nil {
			return false
		}
		queued = unwritten(cn)
		return int64(queued)+int64(b.Stats().MessagesOut) == n-1 && queued >= 5
	})
	c1.Kill()
	var lost, ok int
	for range n {
		err := <-errs
		switch CodeOf(err) {
		case CodeReplyLost:
			lost++
		case 0:
			if err != nil {
				t.Fatal(err)
			}
			ok++
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
	if ok < queued || lost == 0 || ok+lost != n {
		t.Fatalf("ok %d lost %d (queued %d): queued calls must succeed, written ones must be lost", ok, lost, queued)
	}
	close(seen)
	ids := map[string]bool{}
	for r := range seen {
		if ids[string(r.ID)] {
			t.Fatalf("id %s sent twice", r.ID)
		}
		ids[string(r.ID)] = true
	}
	if len(ids) != ok {
		t.Fatalf("second connection saw %d requests, want %d (only the unwritten ones)", len(ids), ok)
	}
}

func TestLazyDialFailureIsPromptAndBacksOff(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	srv.Stop() // nothing listens: connection refused
	b := startBridge(t, srv.URL(), Options{Backoff: Backoff{Base: time.Hour}})
	_, err := b.Call(ctxT(t), "echo", nil, CallOptions{})
	e := wantCode(t, err, CodeUnavailable)
	if !strings.Contains(e.Error(), "refused") {
		t.Fatalf("error %q does not give the dial failure", e)
	}
	// Within the backoff, calls fail fast without dialling.
	_, err = b.Call(ctxT(t), "echo", nil, CallOptions{})
	e = wantCode(t, err, CodeUnavailable)
	if !strings.Contains(e.Error(), "next dial in") {
		t.Fatalf("error %q does not say when the next dial is", e)
	}
	if st := b.Stats(); st.DialFailures != 1 || st.State != StateBackoff {
		t.Fatalf("stats %+v, want one dial failure and backoff", st)
	}
}

func TestWaitForReadyWaitsThroughBackoff(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	srv.Stop()
	b := startBridge(t, srv.URL(), Options{Backoff: Backoff{Base: 20 * time.Millisecond, Max: 50 * time.Millisecond}})
	_, err := b.Call(ctxT(t), "echo", nil, CallOptions{})
	wantCode(t, err, CodeUnavailable)

	done := make(chan error, 1)
	go func() {
		_, err := b.Call(ctxT(t), "echo", json.RawMessage(`[1]`), CallOptions{WaitForReady: true})
		done <- err
	}()
	bridgetest.Eventually(t, "more failed dials while the caller waits", func() bool { return b.Stats().DialFailures >= 3 })
	select {
	case err := <-done:
		t.Fatalf("wait-for-ready call ended while the backend was down: %v", err)
	default:
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// A wait-for-ready call still ends at its deadline.
	srv.Stop()
	bridgetest.Eventually(t, "the loss", func() bool { return b.Stats().State != StateConnected })
	_, err = b.Call(ctxT(t), "echo", nil, CallOptions{WaitForReady: true, Timeout: 100 * time.Millisecond})
	wantCode(t, err, CodeDeadlineExceeded)
}

func TestEagerRedialsWithBackoff(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	srv.Stop()
	b := startBridge(t, srv.URL(), Options{Eager: true, Backoff: Backoff{Base: 10 * time.Millisecond, Max: 40 * time.Millisecond}})
	bridgetest.Eventually(t, "repeated dials", func() bool { return b.Stats().DialFailures >= 4 })
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	nextConn(t, srv) // redialled in the background, no call needed
	bridgetest.Eventually(t, "connected", func() bool { return b.Stats().State == StateConnected })
	// A loss makes an eager Bridge redial at once, without a call.
	srv.Stop()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	nextConn(t, srv)
	bridgetest.Eventually(t, "reconnected", func() bool { return b.Stats().Reconnects == 1 })
}

func TestBackoffDelays(t *testing.T) {
	b := Backoff{}.withDefaults()
	if b.Base != time.Second || b.Multiplier != 1.6 || b.Jitter != 0.2 || b.Max != 120*time.Second {
		t.Fatalf("defaults %+v are not gRPC's", b)
	}
	mid := func() float64 { return 0.5 }
	lo := func() float64 { return 0 }
	hi := func() float64 { return 0.999999 }
	want := []time.Duration{time.Second, 1600 * time.Millisecond, 2560 * time.Millisecond, 4096 * time.Millisecond}
	for i, w := range want {
		if got := b.Delay(i+1, mid); got != w {
			t.Fatalf("delay after %d failures = %v, want %v", i+1, got, w)
		}
		if got := b.Delay(i+1, lo); got != time.Duration(float64(w)*0.8) {
			t.Fatalf("low jitter after %d failures = %v, want %v", i+1, got, time.Duration(float64(w)*0.8))
		}
		if got := b.Delay(i+1, hi); got < time.Duration(float64(w)*1.19) || got > time.Duration(float64(w)*1.2) {
			t.Fatalf("high jitter after %d failures = %v", i+1, got)
		}
	}
	if got := b.Delay(100, mid); got != 120*time.Second {
		t.Fatalf("delay after 100 failures = %v, want the 120s cap", got)
	}
	if got := (Backoff{Jitter: -1}).withDefaults().Delay(1, hi); got != time.Second {
		t.Fatalf("negative jitter = %v, want none", got)
	}
}

func TestHeartbeatDetectsSilentBackend(t *testing.T) {
	srv := bridgetest.NewServer(t, bridgetest.Forward(nil))
	b := startBridge(t, srv.URL(), Options{PingInterval: 20 * time.Millisecond, PingTimeout: 50 * time.Millisecond})
	errc := make(chan error, 1)
	go func() { _, err := b.Call(ctxT(t), "hold", nil, CallOptions{}); errc <- err }()
	nextConn(t, srv)
	bridgetest.Eventually(t, "the request", func() bool { return srv.Frames() == 1 })
	srv.SetNoPong(true)
	e := wantCode(t, <-errc, CodeReplyLost)
	if !strings.Contains(e.Error(), "no pong") {
		t.Fatalf("error %q does not name the missing pong", e)
	}
}

func TestDeadlineAndLateReply(t *testing.T) {
	got := make(chan *bridgetest.Request, 1)
	srv := bridgetest.NewServer(t, bridgetest.Forward(got))
	b := startBridge(t, srv.URL(), Options{})
	_, err := b.Call(ctxT(t), "hold", nil, CallOptions{Timeout: 50 * time.Millisecond})
	wantCode(t, err, CodeDeadlineExceeded)
	if st := b.Stats(); st.Pending != 0 || st.InFlight != 0 || st.Timeouts != 1 {
		t.Fatalf("after the deadline: %+v", st)
	}
	r := <-got
	c := nextConn(t, srv)
	if err := c.Reply(ctxT(t), r.ID, "too late"); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "the late reply to be counted", func() bool { return b.Stats().Late == 1 })
	if st := b.Stats(); st.Unknown != 0 {
		t.Fatalf("late reply counted as unknown: %+v", st)
	}
}

func TestSmallestDeadlineWins(t *testing.T) {
	srv := bridgetest.NewServer(t, bridgetest.Forward(nil))
	for _, tc := range []struct {
		name                    string
		ctxTimeout, callTimeout time.Duration
		optTimeout              time.Duration
	}{
		{"context", 50 * time.Millisecond, time.Minute, time.Minute},
		{"call option", time.Minute, time.Minute, 50 * time.Millisecond},
		{"bridge CallTimeout", time.Minute, 50 * time.Millisecond, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := startBridge(t, srv.URL(), Options{CallTimeout: tc.callTimeout})
			ctx, cancel := context.WithTimeout(context.Background(), tc.ctxTimeout)
			defer cancel()
			start := time.Now()
			_, err := b.Call(ctx, "hold", nil, CallOptions{Timeout: tc.optTimeout})
			wantCode(t, err, CodeDeadlineExceeded)
			// Generous for a 50 ms deadline; the wrong one is a minute.
			if el := time.Since(start); el > 5*time.Second {
				t.Fatalf("took %v", el)
			}
		})
	}
}

func TestCancelRemovesEntryAtOnce(t *testing.T) {
	srv := bridgetest.NewServer(t, bridgetest.Forward(nil))
	b := startBridge(t, srv.URL(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := b.Call(ctx, "hold", nil, CallOptions{}); errc <- err }()
	nextConn(t, srv)
	bridgetest.Eventually(t, "the request", func() bool { return srv.Frames() == 1 })
	cancel()
	wantCode(t, <-errc, CodeCanceled)
	if st := b.Stats(); st.Pending != 0 || st.InFlight != 0 || st.Timeouts != 0 {
		t.Fatalf("after cancel: %+v", st)
	}
}

func TestInFlightLimit(t *testing.T) {
	srv := bridgetest.NewServer(t, bridgetest.Forward(nil))
	b := startBridge(t, srv.URL(), Options{MaxInFlight: 2})
	ctx, cancel := context.WithCancel(ctxT(t))
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { _, _ = b.Call(ctx, "hold", nil, CallOptions{}) })
	}
	bridgetest.Eventually(t, "two calls in flight", func() bool { return b.Stats().InFlight == 2 })
	_, err := b.Call(ctxT(t), "hold", nil, CallOptions{})
	wantCode(t, err, CodeOverloaded)
	cancel()
	wg.Wait()
	if st := b.Stats(); st.Rejected != 1 {
		t.Fatalf("rejected %d, want 1", st.Rejected)
	}
}

func TestOversizeRequestIsRefusedBeforeSending(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{MaxMessageBytes: 1024})
	_, err := b.Call(ctxT(t), "echo", json.RawMessage(`["`+strings.Repeat("x", 1000)+`"]`), CallOptions{})
	wantCode(t, err, CodeTooLarge)
	_, err = b.Call(ctxT(t), "echo", json.RawMessage(`["`+strings.Repeat("x", 2000)+`"]`), CallOptions{})
	wantCode(t, err, CodeTooLarge)
	if srv.Accepted() != 0 || srv.Frames() != 0 {
		t.Fatal("an oversize request reached the backend")
	}
	if _, err := b.Call(ctxT(t), "echo", json.RawMessage(`["`+strings.Repeat("x", 900)+`"]`), CallOptions{}); err != nil {
		t.Fatalf("a request under the limit failed: %v", err)
	}
}

func TestCloseSendsGoingAwayAndFailsInFlight(t *testing.T) {
	status := make(chan websocket.StatusCode, 1)
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			if _, err := c.Read(ctx); err != nil {
				status <- websocket.CloseStatus(err)
				return
			}
		}
	})
	b, err := New(Options{URL: srv.URL()})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := b.Call(ctxT(t), "hold", nil, CallOptions{}); errc <- err }()
	bridgetest.Eventually(t, "the request", func() bool { return srv.Frames() == 1 })
	b.Close()
	wantCode(t, <-errc, CodeReplyLost) // written: the backend may have run it
	if got := <-status; got != websocket.StatusGoingAway {
		t.Fatalf("backend saw %v, want 1001", got)
	}
	_, err = b.Call(ctxT(t), "echo", nil, CallOptions{})
	wantCode(t, err, CodeDraining)
}

func TestDrainWaitsForCallsInFlight(t *testing.T) {
	got := make(chan *bridgetest.Request, 1)
	srv := bridgetest.NewServer(t, bridgetest.Forward(got))
	b := startBridge(t, srv.URL(), Options{})
	errc := make(chan error, 1)
	go func() { _, err := b.Call(ctxT(t), "hold", nil, CallOptions{}); errc <- err }()
	r := <-got
	drained := make(chan error, 1)
	go func() { drained <- b.Drain(ctxT(t)) }()
	bridgetest.Eventually(t, "draining", func() bool { return b.draining.Load() })
	_, err := b.Call(ctxT(t), "echo", nil, CallOptions{})
	wantCode(t, err, CodeDraining)
	select {
	case <-drained:
		t.Fatal("Drain returned with a call in flight")
	default:
	}
	c := nextConn(t, srv)
	if err := c.Reply(ctxT(t), r.ID, 1); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	// With nothing in flight Drain returns at once, even with a done context.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Drain(ctx); err != nil {
		t.Fatalf("Drain with nothing in flight: %v", err)
	}
}

func TestDrainGivesUpAtItsDeadline(t *testing.T) {
	srv := bridgetest.NewServer(t, bridgetest.Forward(nil))
	b := startBridge(t, srv.URL(), Options{})
	callCtx, stopCall := context.WithCancel(ctxT(t))
	errc := make(chan error, 1)
	go func() { _, err := b.Call(callCtx, "hold", nil, CallOptions{}); errc <- err }()
	bridgetest.Eventually(t, "the request", func() bool { return srv.Frames() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := b.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain with a call held: %v", err)
	}
	stopCall()
	wantCode(t, <-errc, CodeCanceled)
}

func TestRepliesOutOfOrder(t *testing.T) {
	got := make(chan *bridgetest.Request, 2)
	srv := bridgetest.NewServer(t, bridgetest.Forward(got))
	b := startBridge(t, srv.URL(), Options{})
	res := make(chan string, 2)
	for _, p := range []string{`["first"]`, `["second"]`} {
		go func() {
			r, err := b.Call(ctxT(t), "echo", json.RawMessage(p), CallOptions{})
			if err != nil {
				res <- err.Error()
				return
			}
			res <- p + "=" + string(r)
		}()
	}
	r1, r2 := <-got, <-got
	c := nextConn(t, srv)
	// Answer in reverse order, the second in a batch frame.
	if err := c.WriteRaw(ctxT(t), `[{"jsonrpc":"2.0","id":`+string(r2.ID)+`,"result":`+string(r2.Params)+`}]`); err != nil {
		t.Fatal(err)
	}
	if err := c.Reply(ctxT(t), r1.ID, r1.Params); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		s := <-res
		p, r, _ := strings.Cut(s, "=")
		if p != r {
			t.Fatalf("call with params %s got %s", p, r)
		}
	}
}

func TestBackendErrorReply(t *testing.T) {
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			_ = c.WriteRaw(ctx, `{"jsonrpc":"2.0","id":`+string(r.ID)+`,"error":{"code":-32601,"message":"no such method","data":{"m":"x"}}}`)
		}
	})
	b := startBridge(t, srv.URL(), Options{})
	_, err := b.Call(ctxT(t), "x", nil, CallOptions{})
	e := wantCode(t, err, CodeBackendError)
	if e.RPC == nil || e.RPC.Code != -32601 || e.RPC.Message != "no such method" || string(e.RPC.Data) != `{"m":"x"}` {
		t.Fatalf("RPC error %+v", e.RPC)
	}
}

// Hostile replies: each guilty caller gets CodeMalformedReply, the
// connection stays up, and junk that names no caller is counted.
func TestMalformedReplies(t *testing.T) {
	replies := map[string]string{
		"both":       `{"jsonrpc":"2.0","id":ID,"result":1,"error":{"code":1,"message":"x"}}`,
		"neither":    `{"jsonrpc":"2.0","id":ID}`,
		"version":    `{"jsonrpc":"1.0","id":ID,"result":1}`,
		"noversion":  `{"id":ID,"result":1}`,
		"stringid":   `{"jsonrpc":"2.0","id":"ID","result":1}`,
		"badcode":    `{"jsonrpc":"2.0","id":ID,"error":{"code":"x","message":"m"}}`,
		"fraccode":   `{"jsonrpc":"2.0","id":ID,"error":{"code":1.5,"message":"m"}}`,
		"nomessage":  `{"jsonrpc":"2.0","id":ID,"error":{"code":1}}`,
		"errorarray": `{"jsonrpc":"2.0","id":ID,"error":[1]}`,
	}
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			// Junk that names nobody comes first; it must not disturb anyone.
			for _, junk := range []string{`not json`, `{"jsonrpc":"2.0","id":999999,"result":1}`, `{"jsonrpc":"2.0","result":1}`,
				`{"jsonrpc":"2.0","method":"note","params":[1]}`, `{"jsonrpc":"2.0","id":5,"method":"backend.asks"}`, `[]`, `42`,
				`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}`, "{\"jsonrpc\":\"2.0\",\"method\":\"n\xff\"}"} {
				_ = c.WriteRaw(ctx, junk)
			}
			_ = c.WriteBinary(ctx, []byte{0, 1, 2})
			if r.Method == "ok" {
				_ = c.Reply(ctx, r.ID, "fine")
				continue
			}
			_ = c.WriteRaw(ctx, strings.ReplaceAll(replies[r.Method], "ID", string(r.ID)))
		}
	})
	var notes atomic.Int64
	b := startBridge(t, srv.URL(), Options{})
	listener := b.NewConsumer(func(method string, params json.RawMessage) {
		if method == "note" && string(params) == "[1]" {
			notes.Add(1)
		}
	})
	defer listener.Close()
	listener.Listen("note")
	for name := range replies {
		_, err := b.Call(ctxT(t), name, nil, CallOptions{})
		wantCode(t, err, CodeMalformedReply)
		if res, err := b.Call(ctxT(t), "ok", nil, CallOptions{}); err != nil || string(res) != `"fine"` {
			t.Fatalf("after %s: %s %v", name, res, err)
		}
	}
	st := b.Stats()
	if srv.Accepted() != 1 || st.Connects != 1 {
		t.Fatalf("the connection did not survive: accepted %d", srv.Accepted())
	}
	calls := uint64(2 * len(replies))
	if st.Unknown < calls || st.BackendRequests != calls || st.Notifications < calls || notes.Load() != int64(calls) {
		t.Fatalf("stats %+v notes %d", st, notes.Load())
	}
	if st.Malformed < 6*calls {
		t.Fatalf("malformed %d, want at least %d", st.Malformed, 6*calls)
	}
}

func TestIDsNeverReusedAcrossReconnects(t *testing.T) {
	got := make(chan *bridgetest.Request, 10)
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			got <- r
			_ = c.Reply(ctx, r.ID, "ok")
		}
	})
	b := startBridge(t, srv.URL(), Options{Backoff: quickRedial})
	if _, err := b.Call(ctxT(t), "a", nil, CallOptions{}); err != nil {
		t.Fatal(err)
	}
	old := <-got
	nextConn(t, srv).Kill()
	bridgetest.Eventually(t, "the loss", func() bool { return b.Stats().State != StateConnected })
	if _, err := b.Call(ctxT(t), "b", nil, CallOptions{}); err != nil {
		t.Fatal(err)
	}
	fresh := <-got
	if bridgetest.IDNumber(fresh.ID) <= bridgetest.IDNumber(old.ID) {
		t.Fatalf("id %s after %s: ids must grow", fresh.ID, old.ID)
	}
	// The new connection gets a reply for the old id: dropped, counted.
	c := nextConn(t, srv)
	if err := c.Reply(ctxT(t), old.ID, "stale"); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "the stale reply to be counted", func() bool { return b.Stats().Unknown == 1 })
}

func TestNotify(t *testing.T) {
	got := make(chan *bridgetest.Request, 1)
	srv := bridgetest.NewServer(t, bridgetest.Forward(got))
	b := startBridge(t, srv.URL(), Options{})
	if err := b.Notify(ctxT(t), "note", json.RawMessage(`{"k":"v"}`), CallOptions{}); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.ID != nil || r.Method != "note" || string(r.Params) != `{"k":"v"}` || r.JSONRPC != "2.0" {
		t.Fatalf("backend got %s", r.Raw)
	}
	if st := b.Stats(); st.Pending != 0 || st.InFlight != 0 {
		t.Fatalf("after notify: %+v", st)
	}
}

func TestHandshakeHeadersAndRedaction(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	url := strings.Replace(srv.URL(), "ws://", "ws://alice:secret@", 1) + "?token=hunter2"
	b := startBridge(t, url, Options{Backoff: quickRedial, Header: http.Header{"X-Api-Key": {"k1"}}})
	if got := b.URL(); strings.Contains(got, "secret") || strings.Contains(got, "hunter2") || strings.Contains(got, "alice") {
		t.Fatalf("URL %q leaks credentials", got)
	}
	if _, err := b.Call(ctxT(t), "echo", nil, CallOptions{}); err != nil {
		t.Fatal(err)
	}
	c := nextConn(t, srv)
	if c.Header.Get("X-Api-Key") != "k1" {
		t.Fatalf("handshake header %v", c.Header)
	}

	srv.Stop()
	bridgetest.Eventually(t, "the loss", func() bool { return b.Stats().State != StateConnected })
	_, err := b.Call(ctxT(t), "echo", nil, CallOptions{})
	wantCode(t, err, CodeUnavailable)
	if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "secret") {
		t.Fatalf("dial error %q leaks credentials", err)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"ws://host:1/p":              "ws://host:1/p",
		"wss://u:p@host/p?key=s&x=1": "wss://REDACTED@host/p?REDACTED",
		"ws://u@host/":               "ws://REDACTED@host/",
		"%zz":                        "(unparseable URL)",
		"wss://mainnet.infura.io/ws/v3/9aa3d95b3bc440fa88ea12eaa4456161":      "wss://mainnet.infura.io/ws/v3/REDACTED",
		"wss://eth-mainnet.g.alchemy.com/v2/abcdefghijklmnopqrstuvwxyz012345": "wss://eth-mainnet.g.alchemy.com/v2/REDACTED",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"http://x", "ws://", "::"} {
		if _, err := New(Options{URL: u}); err == nil {
			t.Errorf("New(%q) succeeded", u)
		}
	}
}

// dialTimes wraps srv's client so that every dial attempt records its
// (bubble) time and is signalled on dialled.
type dialTimes struct {
	dialled chan struct{}
	mu      sync.Mutex
	times   []time.Time
}

func (d *dialTimes) client(srv *bridgetest.Server) *http.Client {
	d.dialled = make(chan struct{}, 1000)
	tr := srv.HTTPClient().Transport.(*http.Transport)
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		d.mu.Lock()
		d.times = append(d.times, time.Now())
		d.mu.Unlock()
		d.dialled <- struct{}{}
		return dial(ctx, network, addr)
	}
	return &http.Client{Transport: tr}
}

// wait waits for n more dial attempts.
func (d *dialTimes) wait(n int) {
	for range n {
		<-d.dialled
	}
}

// delays returns the gaps between dial attempts.
func (d *dialTimes) delays() []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []time.Duration
	for i := 1; i < len(d.times); i++ {
		out = append(out, d.times[i].Sub(d.times[i-1]))
	}
	return out
}

func (d *dialTimes) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.times)
}

func checkSchedule(t *testing.T, delays []time.Duration) {
	t.Helper()
	want := time.Second
	for i, d := range delays {
		if d < time.Duration(float64(want)*0.8) || d > time.Duration(float64(want)*1.2) {
			t.Fatalf("delay %d = %v, want %v ± 20%% (all: %v)", i+1, d, want, delays)
		}
		want = min(time.Duration(float64(want)*1.6), 120*time.Second)
	}
}

// eagerPipeBridge starts an eager Bridge to the pipe server srv (in a
// synctest bubble), its dials recorded by dials.
func eagerPipeBridge(t *testing.T, srv *bridgetest.Server, dials *dialTimes, opts Options) *Bridge {
	t.Helper()
	opts.URL, opts.Eager, opts.HTTPClient = srv.URL(), true, dials.client(srv)
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// The redial loop waits Backoff.Delay between failed dials (1 s, 1.6 s,
// 2.56 s, ... ± 20 %, capped at 120 s). The test runs in a synctest
// bubble: the backoff timers are the real ones, on the bubble's clock.
func TestEagerBackoffSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := bridgetest.NewPipeServer(t, nil)
		srv.Stop()
		var dials dialTimes
		eagerPipeBridge(t, srv, &dials, Options{})
		dials.wait(13)
		delays := dials.delays()[:12]
		checkSchedule(t, delays)
		if delays[11] > 120*time.Second*12/10 {
			t.Fatalf("delay beyond the cap: %v", delays[11])
		}
	})
}

// A backend that accepts and drops at once is not redialled in a tight
// loop: a connection that did not last Backoff.Base counts as a failure.
func TestDropAtOnceBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := bridgetest.NewPipeServer(t, func(ctx context.Context, c *bridgetest.Conn) {})
		var dials dialTimes
		eagerPipeBridge(t, srv, &dials, Options{})
		dials.wait(6)
		checkSchedule(t, dials.delays()[:5])
		if n := srv.Accepted(); n > 6 {
			t.Fatalf("%d connections for 5 backoff waits", n)
		}
	})
}

func TestCancelledCallersSendNothing(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 200 {
		_, err := b.Call(ctx, "echo", nil, CallOptions{})
		wantCode(t, err, CodeCanceled)
	}
	if srv.Accepted() != 0 || srv.Frames() != 0 {
		t.Fatalf("cancelled callers reached the backend: %d dials, %d frames", srv.Accepted(), srv.Frames())
	}
}

func TestUnparseableReplyFailsItsCallerAtOnce(t *testing.T) {
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			_ = c.WriteRaw(ctx, `{"jsonrpc":"2.0","id":`+string(r.ID)+`,"result":`) // truncated
		}
	})
	b := startBridge(t, srv.URL(), Options{})
	_, err := b.Call(ctxT(t), "x", nil, CallOptions{Timeout: time.Minute})
	wantCode(t, err, CodeMalformedReply)
}

// A backend that accepts TCP but never answers the handshake: the call
// fails with UNAVAILABLE at the dial timeout, not at its own deadline.
func TestSilentBackendFailsAtTheDialTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	b := startBridge(t, "ws://"+ln.Addr().String()+"/", Options{DialTimeout: 100 * time.Millisecond})
	_, err = b.Call(ctxT(t), "echo", nil, CallOptions{Timeout: time.Minute})
	wantCode(t, err, CodeUnavailable)
}

// Close with a backend that never answers the close handshake is bounded
// (coder/websocket alone would wait 5 s to write and 5 s for the reply).
func TestCloseIsBoundedWithASilentBackend(t *testing.T) {
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) { <-ctx.Done() })
	b, err := New(Options{URL: srv.URL(), Eager: true})
	if err != nil {
		t.Fatal(err)
	}
	nextConn(t, srv)
	bridgetest.Eventually(t, "connected", func() bool { return b.Stats().State == StateConnected })
	start := time.Now()
	b.Close()
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("Close took %v", el)
	}
}

// Scenario 4: 100 gateways backing off do not dial in lockstep: the
// jittered delays spread.
func TestScenario04JitterSpreadsRedials(t *testing.T) {
	b := Backoff{}.withDefaults()
	seen := map[time.Duration]bool{}
	lo, hi := time.Hour, time.Duration(0)
	for range 100 {
		d := b.Delay(3, jitterRand)
		seen[d.Round(time.Millisecond)] = true
		lo, hi = min(lo, d), max(hi, d)
	}
	if len(seen) < 50 || hi-lo < 500*time.Millisecond {
		t.Fatalf("100 delays: %d distinct, spread %v; want them spread over ±20%% of 2.56s", len(seen), hi-lo)
	}
}

// Scenario 4: the backoff starts over after a connection that lasted.
func TestScenario04BackoffResetsAfterSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := bridgetest.NewPipeServer(t, func(ctx context.Context, c *bridgetest.Conn) { <-ctx.Done() })
		srv.Stop()
		var dials dialTimes
		b := eagerPipeBridge(t, srv, &dials, Options{PingInterval: -1, Backoff: Backoff{Base: 10 * time.Millisecond, Max: time.Second}})
		dials.wait(6)
		if d := dials.delays()[4]; d < 50*time.Millisecond {
			t.Fatalf("the fifth delay is %v: the backoff does not grow", d)
		}
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		dials.wait(1)
		nextConn(t, srv)
		synctest.Wait()
		if st := b.State(); st != StateConnected {
			t.Fatalf("state %v after the backend came back", st)
		}
		time.Sleep(20 * time.Millisecond) // the connection lasts longer than Backoff.Base
		before := dials.count()
		srv.Stop()
		dials.wait(2)
		// The dial right after the loss fails; the wait before the next one
		// is the base again.
		if first := dials.delays()[before]; first > 12*time.Millisecond {
			t.Fatalf("first delay after a lasting connection %v, want the base (10ms ± 20%%)", first)
		}
	})
}

// unwritten counts the requests registered on c that the writer has not
// (yet) written.
func unwritten(c *conn) int {
	n := 0
	for i := range c.pending.shards {
		sh := &c.pending.shards[i]
		sh.mu.Lock()
		for _, o := range sh.ops {
			if o.state.Load() == opQueued {
				n++
			}
		}
		sh.mu.Unlock()
	}
	return n
}
