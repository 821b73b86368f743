package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/invariants"
)

// toxiproxyLeaks are goroutines toxiproxy leaves behind when a toxic is
// added to a link that then closes (a toxiproxy bug, not ours).
var toxiproxyLeaks = []goleak.Option{
	goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*NoopToxic).Pipe"),
	goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/stream.(*ChanWriter).Write"),
}

// rig is the fault-injection setup of the reliability catalogue: the
// gateway talks to scripted backends (fbs) through toxiproxy (tps), in
// process, on loopback. fb and tp are the first of them.
type rig struct {
	fb    *bridgetest.Server
	tp    *toxiproxy.Proxy
	fbs   []*bridgetest.Server
	tps   []*toxiproxy.Proxy
	h     *harness
	seen  *idLog
	calls invariants.Calls
	conns dialCounter
}

// dialCounter counts the gateway's backend connections (I4), at the
// gateway's end: a proxy may hold its far end open a little longer.
type dialCounter struct {
	mu        sync.Mutex
	open, max int
}

type dialCountedConn struct {
	net.Conn
	c    *dialCounter
	once sync.Once
}

func (cc *dialCountedConn) Close() error {
	cc.once.Do(func() {
		cc.c.mu.Lock()
		cc.c.open--
		cc.c.mu.Unlock()
	})
	return cc.Conn.Close()
}

func (c *dialCounter) client() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	var d net.Dialer
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		c.open++
		c.max = max(c.max, c.open)
		c.mu.Unlock()
		return &dialCountedConn{Conn: conn, c: c}, nil
	}
	return &http.Client{Transport: tr}
}

func (c *dialCounter) maxOpen() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return int64(c.max)
}

// idLog records every request id the backend sees, to check none twice.
type idLog struct {
	mu  sync.Mutex
	ids map[string]int
}

func (l *idLog) add(id json.RawMessage) {
	l.mu.Lock()
	l.ids[string(id)]++
	l.mu.Unlock()
}

func (l *idLog) duplicates() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.ids {
		if c > 1 {
			n++
		}
	}
	return n
}

// scripted answers "echo" with its params at once, "slow" after
// params[1] ms, and never answers "hold".
func (l *idLog) scripted(ctx context.Context, c *bridgetest.Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		r, err := c.Read(ctx)
		if err != nil {
			return
		}
		if r.ID == nil {
			continue
		}
		l.add(r.ID)
		switch r.Method {
		case "hold":
		case "slow":
			var p []json.RawMessage
			_ = json.Unmarshal(r.Params, &p)
			var ms int
			if len(p) > 1 {
				_ = json.Unmarshal(p[1], &ms)
			}
			wg.Go(func() {
				t := time.NewTimer(time.Duration(ms) * time.Millisecond)
				defer t.Stop()
				select {
				case <-t.C:
					_ = c.Reply(ctx, r.ID, r.Params)
				case <-ctx.Done():
				}
			})
		default:
			_ = c.Reply(ctx, r.ID, r.Params)
		}
	}
}

func newRig(t *testing.T, mutate func(*Options)) *rig {
	t.Helper()
	return newRigN(t, 1, mutate)
}

// newRigN is a rig with n backends (given to the gateway as its backend
// list when n > 1), all scripted alike and sharing one id log.
func newRigN(t *testing.T, n int, mutate func(*Options)) *rig {
	t.Helper()
	r := &rig{seen: &idLog{ids: map[string]int{}}}
	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	var backends []bridge.BackendOptions
	for i := range n {
		fb := bridgetest.NewServer(t, r.seen.scripted)
		tp := toxiproxy.NewProxy(api, fmt.Sprintf("backend%d", i), "127.0.0.1:0", fb.Addr())
		if err := tp.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tp.Stop)
		r.fbs, r.tps = append(r.fbs, fb), append(r.tps, tp)
		backends = append(backends, bridge.BackendOptions{URL: "ws://" + tp.Listen + "/"})
	}
	r.fb, r.tp = r.fbs[0], r.tps[0]
	r.h = start(t, "ws://"+r.tp.Listen+"/", func(o *Options) {
		o.Bridge.HTTPClient = r.conns.client()
		if n > 1 {
			o.Bridge.URL, o.Bridge.Backends = "", backends
		}
		if mutate != nil {
			mutate(o)
		}
	})
	return r
}

func (r *rig) toxic(t *testing.T, js string) {
	t.Helper()
	if _, err := r.tp.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) clearToxics() { r.tp.Toxics.ResetToxics(context.Background()) }

// call makes one gRPC call carrying a nonce and records its outcome.
func (r *rig) call(t *testing.T, method string, extra string, timeout time.Duration) (codes.Code, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	dl, _ := ctx.Deadline()
	k := r.calls.Start(dl)
	start := time.Now()
	params := fmt.Sprintf(`[%q%s]`, k.Nonce, extra)
	res, err := r.h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: method, Params: value(t, params)})
	got := ""
	if err == nil {
		got = jsonOf(t, res.Result)
	}
	k.End(err == nil, got, 100*time.Millisecond)
	return status.Code(err), time.Since(start)
}

// finish checks the invariants I1-I4 once the test's calls are done.
func (r *rig) finish(t *testing.T, conns int) {
	t.Helper()
	r.calls.Check(t)
	invariants.Drained(t, r.h.srv.Bridge())
	invariants.MaxConns(t, r.conns.maxOpen(), conns)
	if d := r.seen.duplicates(); d != 0 {
		t.Errorf("the backend saw %d ids more than once", d)
	}
}

// inFlight starts n "hold" calls and waits until the backend has them all.
func (r *rig) inFlight(t *testing.T, n int, timeout time.Duration) chan codes.Code {
	out := make(chan codes.Code, n)
	for range n {
		go func() {
			code, _ := r.call(t, "hold", "", timeout)
			out <- code
		}()
	}
	bridgetest.Eventually(t, "the calls to reach the backend", func() bool { return r.h.srv.Bridge().Stats().MessagesOut >= uint64(n) })
	return out
}

// Scenario 1: 1,000 calls in flight, the link is reset (variant: the
// backend closes with 1001). All end within 1 s with UNAVAILABLE; the
// backend saw each id once; when it returns the next call succeeds and
// reconnects is 1.
func TestScenario01LinkResetWith1000InFlight(t *testing.T) {
	for _, variant := range []string{"reset_peer", "close_1001"} {
		t.Run(variant, func(t *testing.T) {
			invariants.Goroutines(t, toxiproxyLeaks...)
			r := newRig(t, func(o *Options) { o.Bridge.Backoff = bridge.Backoff{Base: 20 * time.Millisecond} })
			out := make(chan time.Time, 1000)
			for range 1000 {
				go func() {
					if code, _ := r.call(t, "hold", "", 30*time.Second); code != codes.Unavailable {
						t.Errorf("a call in flight ended with %v, want UNAVAILABLE", code)
					}
					out <- time.Now()
				}()
			}
			bridgetest.Eventually(t, "the calls to reach the backend", func() bool { return r.h.srv.Bridge().Stats().MessagesOut >= 1000 })
			if variant == "reset_peer" {
				// The next data on the link (an extra call) resets it.
				r.toxic(t, `{"type":"reset_peer","stream":"upstream","attributes":{"timeout":0}}`)
				go r.call(t, "echo", "", 5*time.Second)
			} else {
				conn := <-r.fb.Conns
				go conn.Close(1001, "going away")
			}
			first := <-out
			last := first
			for range 999 {
				last = <-out
			}
			if spread := last.Sub(first); spread > time.Second {
				t.Fatalf("the calls ended over %v, want all within 1s of the loss", spread)
			}
			r.clearToxics()
			bridgetest.Eventually(t, "the next call to succeed", func() bool {
				code, _ := r.call(t, "echo", "", 5*time.Second)
				return code == codes.OK
			})
			if st := r.h.srv.Bridge().Stats(); st.Reconnects != 1 {
				t.Fatalf("reconnects %d, want 1", st.Reconnects)
			}
			r.finish(t, 1)
		})
	}
}

// Scenario 2: a blackholed link is detected within ping interval + pong
// timeout; calls get UNAVAILABLE (or DEADLINE_EXCEEDED when theirs comes
// first).
func TestScenario02Blackhole(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRig(t, func(o *Options) {
		o.Bridge.PingInterval = 100 * time.Millisecond
		o.Bridge.PingTimeout = 100 * time.Millisecond
	})
	if code, _ := r.call(t, "echo", "", 5*time.Second); code != codes.OK {
		t.Fatal(code)
	}
	out := r.inFlight(t, 50, 30*time.Second)
	r.toxic(t, `{"type":"timeout","stream":"downstream","attributes":{"timeout":0}}`)
	cut := time.Now()
	for range 50 {
		if code := <-out; code != codes.Unavailable {
			t.Fatalf("call in flight: %v", code)
		}
	}
	// Detection within ping interval + pong timeout (+ scheduling slack).
	if el := time.Since(cut); el > time.Second {
		t.Fatalf("blackhole detected after %v, want about 200ms", el)
	}
	if code, _ := r.call(t, "hold", "", 150*time.Millisecond); code != codes.DeadlineExceeded && code != codes.Unavailable {
		t.Fatalf("call into the blackhole: %v", code)
	}
	r.clearToxics()
	r.finish(t, 1)
}

// Scenario 3: the backend is down when the gateway starts: readiness is
// NOT_SERVING, calls fail fast with UNAVAILABLE (wait-for-ready ones wait),
// and readiness turns SERVING once the backend is up.
func TestScenario03BackendDownAtStart(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRig(t, func(o *Options) {
		o.Bridge.Eager = true
		o.Bridge.Backoff = bridge.Backoff{Base: 50 * time.Millisecond, Max: 100 * time.Millisecond}
	})
	r.tp.Stop()
	r.h.stop() // restart the gateway with the backend down
	r2 := start(t, "ws://"+r.tp.Listen+"/", func(o *Options) {
		o.Bridge.Eager = true
		o.Bridge.Backoff = bridge.Backoff{Base: 50 * time.Millisecond, Max: 100 * time.Millisecond}
	})
	hc := healthpb.NewHealthClient(r2.conn)
	bridgetest.Eventually(t, "NOT_SERVING", func() bool {
		resp, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{})
		return err == nil && resp.Status == healthpb.HealthCheckResponse_NOT_SERVING
	})
	start := time.Now()
	if _, err := r2.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("call with the backend down: %v", err)
	}
	if el := time.Since(start); el > 500*time.Millisecond {
		t.Fatalf("failing took %v: calls must fail fast", el)
	}
	wfr := make(chan error, 1)
	go func() {
		_, err := r2.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", WaitForReady: true})
		wfr <- err
	}()
	if err := r.tp.Start(); err != nil {
		t.Fatal(err)
	}
	if err := <-wfr; err != nil {
		t.Fatalf("wait-for-ready call: %v", err)
	}
	bridgetest.Eventually(t, "SERVING", func() bool {
		resp, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{})
		return err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING
	})
}

// Scenario 6 (short; `make soak` runs the long one): the backend flaps
// 100 ms up / 100 ms down while calls flow. Every call ends by its
// deadline with its own reply or an error; nothing is left over.
func TestScenario06FlappingBackend(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRig(t, func(o *Options) {
		o.Bridge.Backoff = bridge.Backoff{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	})
	stop := make(chan struct{})
	flaps := flap(r.tp, 100*time.Millisecond, stop)
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * time.Second)
	var ok, failed int64
	var mu sync.Mutex
	for range 20 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				code, _ := r.call(t, "slow", ",5", 2*time.Second)
				mu.Lock()
				if code == codes.OK {
					ok++
				} else {
					failed++
				}
				mu.Unlock()
				if code != codes.OK {
					time.Sleep(5 * time.Millisecond) // a client's retry pause
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	flaps()
	if ok == 0 || failed == 0 {
		t.Fatalf("%d ok, %d failed: the flapping did not show", ok, failed)
	}
	t.Logf("%d calls ok, %d failed across the flaps", ok, failed)
	r.finish(t, 1)
}

// flap stops and restarts tp every period until stop is closed, leaving
// it started; the function returned waits for that and reports the number
// of times tp went down.
func flap(tp *toxiproxy.Proxy, period time.Duration, stop <-chan struct{}) func() int {
	var wg sync.WaitGroup
	downs := 0
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(period):
			}
			tp.Stop()
			downs++
			select {
			case <-stop:
				_ = tp.Start()
				return
			case <-time.After(period):
			}
			_ = tp.Start()
		}
	})
	return func() int {
		wg.Wait()
		return downs
	}
}

// Scenario 7: 500 ± 100 ms of latency and a 200 ms deadline: the call ends
// with DEADLINE_EXCEEDED at about 200 ms; the late reply is counted.
func TestScenario07LatencyBeyondDeadline(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRig(t, nil)
	if code, _ := r.call(t, "echo", "", 5*time.Second); code != codes.OK {
		t.Fatal(code)
	}
	r.toxic(t, `{"type":"latency","stream":"downstream","attributes":{"latency":500,"jitter":100}}`)
	code, took := r.call(t, "echo", "", 200*time.Millisecond)
	if code != codes.DeadlineExceeded {
		t.Fatalf("code %v, want DEADLINE_EXCEEDED", code)
	}
	if took < 195*time.Millisecond || took > time.Second {
		t.Fatalf("ended after %v, want about 200ms", took)
	}
	bridgetest.Eventually(t, "the late reply to be counted", func() bool { return r.h.srv.Bridge().Stats().Late == 1 })
	r.clearToxics()
	r.finish(t, 1)
}

// Scenario 9: the backend stops reading. The write deadline (and the
// heartbeat) recycle the link; callers get UNAVAILABLE; writers do not
// pile up.
func TestScenario09BackendStopsReading(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRig(t, func(o *Options) {
		o.Bridge.WriteTimeout = 200 * time.Millisecond
		o.Bridge.PingInterval = 100 * time.Millisecond
		o.Bridge.PingTimeout = 200 * time.Millisecond
		o.Bridge.MaxMessageBytes = 8 << 20
	})
	if code, _ := r.call(t, "echo", "", 5*time.Second); code != codes.OK {
		t.Fatal(code)
	}
	r.toxic(t, `{"type":"timeout","stream":"upstream","attributes":{"timeout":0}}`)
	big := `,"` + strings.Repeat("x", 1<<20) + `"`
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if code, _ := r.call(t, "echo", big, 10*time.Second); code != codes.Unavailable {
				t.Errorf("call to a backend that stopped reading: %v", code)
			}
		})
	}
	wg.Wait()
	r.clearToxics()
	r.finish(t, 1)
}

// Scenario 10: a caller that goes away (gRPC cancel, REST disconnect,
// WebSocket close) leaves no pending entry; the late reply is dropped and
// counted.
func TestScenario10CallersThatGoAway(t *testing.T) {
	for _, face := range []string{"grpc", "rest", "ws"} {
		t.Run(face, func(t *testing.T) {
			invariants.Goroutines(t)
			got := make(chan *bridgetest.Request, 1)
			fb := bridgetest.NewServer(t, bridgetest.Forward(got))
			h := start(t, fb.URL(), nil)
			ctx, cancel := context.WithCancel(ctxT(t))
			done := make(chan struct{})
			switch face {
			case "grpc":
				go func() {
					defer close(done)
					_, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "hold"})
					if status.Code(err) != codes.Canceled {
						t.Errorf("gRPC: %v", err)
					}
				}()
			case "rest":
				go func() {
					defer close(done)
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/v1/call/hold", strings.NewReader(`[]`))
					req.Header.Set("Content-Type", "application/json")
					if resp, err := http.DefaultClient.Do(req); err == nil {
						resp.Body.Close()
						t.Errorf("REST: got a reply %d", resp.StatusCode)
					}
				}()
			case "ws":
				c := dialWS(t, h)
				c.send(`{"jsonrpc":"2.0","id":1,"method":"hold"}`)
				go func() { defer close(done); <-ctx.Done(); c.conn.CloseNow() }()
			}
			r := <-got
			cancel()
			<-done
			bridgetest.Eventually(t, "the pending entry to go", func() bool {
				st := h.srv.Bridge().Stats()
				return st.Pending == 0 && st.InFlight == 0
			})
			if err := (<-fb.Conns).Reply(ctxT(t), r.ID, "late"); err != nil {
				t.Fatal(err)
			}
			bridgetest.Eventually(t, "the late reply to be counted", func() bool { return h.srv.Bridge().Stats().Late == 1 })
			h.stop()
			http.DefaultClient.CloseIdleConnections()
		})
	}
}

// Scenario 13: with --max-inflight 1000, 1500 slow calls: exactly 500 get
// RESOURCE_EXHAUSTED, at once.
func TestScenario13InFlightLimitExactly(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRig(t, func(o *Options) { o.Bridge.MaxInFlight = 1000 })
	out := make(chan codes.Code, 1500)
	for range 1500 {
		go func() {
			code, _ := r.call(t, "hold", "", 20*time.Second)
			out <- code
		}()
	}
	// The held calls end only when the backend stops, below: so each of
	// the first 500 outcomes is a rejection that did not wait for any
	// call to end, whatever the machine's load.
	for range 500 {
		if code := <-out; code != codes.ResourceExhausted {
			t.Fatalf("a call ended with %v while 1000 were held", code)
		}
	}
	bridgetest.Eventually(t, "1000 calls held", func() bool { return r.h.srv.Bridge().Stats().InFlight == 1000 })
	if st := r.h.srv.Bridge().Stats(); st.Rejected != 500 {
		t.Fatalf("rejected %d, want exactly 500", st.Rejected)
	}
	r.fb.Stop() // end the held calls
	for range 1000 {
		if code := <-out; code == codes.ResourceExhausted {
			t.Fatal("more than 500 calls were rejected")
		}
	}
	r.finish(t, 1)
}

// Scenario 14: a client holding many calls cannot starve another: with
// --max-inflight-per-client, A is capped and B is never rejected.
func TestScenario14OneClientCannotStarveAnother(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRig(t, func(o *Options) { o.MaxInFlightPerClient = 100; o.Bridge.MaxInFlight = 150 })
	a, b := dialWS(t, r.h), dialWS(t, r.h)
	for i := range 1000 {
		a.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"hold"}`, i))
	}
	rejectedA := 0
	for rejectedA < 900 {
		if m := a.recv(); strings.Contains(m, "-32012") {
			rejectedA++
		}
	}
	for i := range 50 {
		if got := b.roundTrip(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"echo","params":["b"]}`, i)); !strings.Contains(got, `"result":["b"]`) {
			t.Fatalf("B was refused while A held 100 calls: %s", got)
		}
	}
	a.conn.CloseNow()
	b.conn.CloseNow()
	r.h.stop()
	r.finish(t, 1)
}

// Scenario 32: the stats counters never go down across reconnects.
func TestScenario32CountersMonotonic(t *testing.T) {
	// Connections here live well under a millisecond; a microsecond base
	// keeps them from counting as failed dials (which back off).
	r := newRig(t, func(o *Options) { o.Bridge.Backoff = bridge.Backoff{Base: time.Microsecond, Max: time.Microsecond} })
	var last *wsbridgev1.Stats
	for i := range 5 {
		if code, _ := r.call(t, "echo", "", 5*time.Second); code != codes.OK {
			t.Fatal(code)
		}
		st, err := r.h.stats.GetStats(ctxT(t), &wsbridgev1.GetStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if last != nil && (st.RequestsHandled < last.RequestsHandled || st.BackendConnects < last.BackendConnects ||
			st.MessagesProxied < last.MessagesProxied || st.GrpcCalls < last.GrpcCalls || st.Errors < last.Errors) {
			t.Fatalf("a counter went down: %v then %v", last, st)
		}
		last = st
		r.tp.Stop() // drop the link
		if err := r.tp.Start(); err != nil {
			t.Fatal(err)
		}
		bridgetest.Eventually(t, fmt.Sprintf("loss %d seen", i), func() bool { return r.h.srv.Bridge().State() != bridge.StateConnected })
	}
	if last.BackendReconnects < 3 {
		t.Fatalf("reconnects %d", last.BackendReconnects)
	}
}
