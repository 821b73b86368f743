package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/invariants"
)

// The tests of several backends: `wsbridge backend` processes, each behind
// an in-process toxiproxy where a test needs latency, and the gateway
// started the way a user starts it with --backend given more than once.

// proxied puts a toxiproxy in front of the backend at url and returns the
// proxy and the URL to give the gateway.
func proxied(t *testing.T, name, url string) (*toxiproxy.Proxy, string) {
	t.Helper()
	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	upstream := strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/")
	p := toxiproxy.NewProxy(api, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p, "ws://" + p.Listen + "/"
}

func addToxic(t *testing.T, p *toxiproxy.Proxy, js string) {
	t.Helper()
	if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatal(err)
	}
}

// twoDelayedBackends starts two demo backends, each behind a proxy that
// delays requests 20 ms, so that calls are in flight on a backend when it
// dies (on bare loopback a reply is often back before a kill lands, and
// there is nothing to retry). It returns the first backend's process and
// URL, and the URLs of both proxies.
func twoDelayedBackends(t *testing.T) (be1 *proc, url1, purl1, purl2 string) {
	t.Helper()
	be1, url1 = startBackend(t, "127.0.0.1:0")
	_, url2 := startBackend(t, "127.0.0.1:0")
	p1, purl1 := proxied(t, "b1", url1)
	p2, purl2 := proxied(t, "b2", url2)
	for _, p := range []*toxiproxy.Proxy{p1, p2} {
		addToxic(t, p, `{"type":"latency","stream":"upstream","attributes":{"latency":20}}`)
	}
	return be1, url1, purl1, purl2
}

// reasonOf is the reason an UNAVAILABLE error carries (REPLY_LOST, ...).
func reasonOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.Reason
		}
	}
	return ""
}

// backendRow is the stats row of the backend whose URL has addr.
func backendRow(t *testing.T, st *wsbridgev1.Stats, url string) *wsbridgev1.BackendStats {
	t.Helper()
	want := strings.TrimSuffix(url, "/")
	for _, row := range st.Backends {
		if row.Url == want {
			return row
		}
	}
	t.Fatalf("no stats row for %s in %v", want, st.Backends)
	return nil
}

// waitStats polls GetStats until ok holds.
func (g *gateway) waitStats(t *testing.T, what string, ok func(*wsbridgev1.Stats) bool) *wsbridgev1.Stats {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := g.getStats(t)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// echoLoad runs callers that call echo with a nonce until stop is closed,
// recording every call; it returns the number of failed calls by code.
type echoLoad struct {
	calls    invariants.Calls
	ok       atomic.Int64
	mu       sync.Mutex
	failures map[string]int // code and reason of each failure
	wg       sync.WaitGroup
	stop     chan struct{}
}

func startEchoLoad(t *testing.T, g *gateway, callers int) *echoLoad {
	l := &echoLoad{failures: map[string]int{}, stop: make(chan struct{})}
	for range callers {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				dl, _ := ctx.Deadline()
				k := l.calls.Start(dl)
				res, err := g.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "echo", Params: params(t, fmt.Sprintf("[%q]", k.Nonce))})
				cancel()
				reply := ""
				if err == nil {
					reply = string(must(res.Result.MarshalJSON()))
					l.ok.Add(1)
				} else {
					l.mu.Lock()
					l.failures[status.Code(err).String()+" "+reasonOf(err)+" "+status.Convert(err).Message()]++
					l.mu.Unlock()
				}
				k.End(err == nil, reply, time.Second)
			}
		})
	}
	return l
}

// waitOK waits until n more calls have succeeded.
func (l *echoLoad) waitOK(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	deadline := time.Now().Add(30 * time.Second)
	for l.ok.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls succeeded of %d wanted; failures %v", l.ok.Load(), target, l.failures)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (l *echoLoad) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	l.calls.Check(t)
	if len(l.failures) != 0 {
		t.Errorf("echo calls failed: %v (%d succeeded)", l.failures, l.ok.Load())
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// Done when, first point: two backends, --retry-methods echo, one backend
// killed under load from 64 callers. No echo call fails and each gets its
// own reply; sleep calls (not retryable) written to the killed backend get
// UNAVAILABLE reply_lost and nothing else, those on the other backend
// succeed; the stats show the failover.
func TestKillOneBackendUnderLoad(t *testing.T) {
	be1, _, purl1, purl2 := twoDelayedBackends(t)
	g := startGateway(t, "--backend", purl1, "--backend", purl2, "--balance", "round-robin", "--retry-methods", "echo")
	// Both backends connected first: while one dials, round robin sends
	// its calls to the other (a dial holds no call another backend can
	// serve).
	g.waitStats(t, "both backends connected", func(st *wsbridgev1.Stats) bool {
		_, _ = g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
		return len(st.Backends) == 2 && st.Backends[0].State == wsbridgev1.BackendState_BACKEND_STATE_CONNECTED &&
			st.Backends[1].State == wsbridgev1.BackendState_BACKEND_STATE_CONNECTED
	})

	// Sleep calls first, spread by round robin over both backends; once
	// they are all written, each backend's waiting count says how many
	// the kill must fail.
	const sleepers = 16
	type outcome struct {
		code   codes.Code
		reason string
	}
	sleeps := make(chan outcome, sleepers)
	for range sleepers {
		go func() {
			_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: params(t, `{"ms":4000}`)})
			sleeps <- outcome{status.Code(err), reasonOf(err)}
		}()
	}
	st := g.waitStats(t, "the sleep calls to be written", func(st *wsbridgev1.Stats) bool {
		return len(st.Backends) == 2 && st.Backends[0].Waiting+st.Backends[1].Waiting == sleepers
	})
	onKilled := backendRow(t, st, purl1).Waiting
	if onKilled == 0 || onKilled == sleepers {
		t.Fatalf("round robin put %d of %d sleep calls on the first backend", onKilled, sleepers)
	}

	load := startEchoLoad(t, g, 64)
	load.waitOK(t, 2000)
	before := g.getStats(t)
	be1.signal(syscall.SIGKILL)
	load.waitOK(t, 4000) // all of them on the surviving backend
	load.finish(t)

	lost, ok := 0, 0
	for range sleepers {
		o := <-sleeps
		switch {
		case o.code == codes.Unavailable && o.reason == "REPLY_LOST":
			lost++
		case o.code == codes.OK:
			ok++
		default:
			t.Errorf("a sleep call ended with %v %s; want OK or UNAVAILABLE REPLY_LOST", o.code, o.reason)
		}
	}
	if lost != int(onKilled) || ok != sleepers-int(onKilled) {
		t.Errorf("sleep calls: %d reply_lost and %d ok; %d were on the killed backend", lost, ok, onKilled)
	}

	after := g.getStats(t)
	killed, survivor := backendRow(t, after, purl1), backendRow(t, after, purl2)
	if killed.State == wsbridgev1.BackendState_BACKEND_STATE_CONNECTED || killed.TransportErrors == 0 {
		t.Errorf("the killed backend's row shows no loss: %v", killed)
	}
	if survivor.RequestsSent <= backendRow(t, before, purl2).RequestsSent+4000 {
		t.Errorf("the survivor took %d requests after the kill, want over 4000", survivor.RequestsSent-backendRow(t, before, purl2).RequestsSent)
	}
	if after.Retries == 0 {
		t.Errorf("no echo call was retried, though calls were in flight on the killed backend")
	}
	if after.ErrorsByReason["reply_lost"] != uint64(onKilled) || after.Errors != uint64(onKilled) {
		t.Errorf("errors %d, by reason %v; want only the %d lost sleep calls", after.Errors, after.ErrorsByReason, onKilled)
	}
	t.Logf("echo calls: %d ok; retried on the other backend: %d; sleep calls lost: %d", load.ok.Load(), after.Retries, lost)
}

// Done when, second point: with --dedup-methods sleep, 1,000 identical
// concurrent sleep {"ms":300} calls reach the backend once; the demo
// backend's counter proves it.
func TestDedupReachesBackendOnce(t *testing.T) {
	_, url := startBackend(t, "127.0.0.1:0")
	g := startGateway(t, "--backend", url, "--dedup-methods", "sleep")
	counter := func() float64 {
		res, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "counter"})
		if err != nil {
			t.Fatal(err)
		}
		return res.Result.GetNumberValue()
	}
	before := counter()
	const n = 1000
	errs := make(chan error, n)
	var wg sync.WaitGroup
	// The first call sleeps long enough for all the others to join it even
	// on a slow machine (1,000 goroutines and their gRPC calls under the
	// race detector); the stats say when they all have.
	for range n {
		wg.Go(func() {
			_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: params(t, `{"ms":3000}`)})
			errs <- err
		})
	}
	g.waitStats(t, "every identical call to join the first", func(st *wsbridgev1.Stats) bool { return st.Coalesced == n-1 })
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The backend counted one sleep between the two counter calls.
	if after := counter(); after != before+2 {
		t.Fatalf("counter went from %v to %v: the backend got %v requests for %d identical calls, want 1", before, after, after-before-1, n)
	}
	if st := g.getStats(t); st.Coalesced != n-1 || st.RequestsHandled != n+2 {
		t.Fatalf("coalesced %d, requests handled %d; want %d and %d", st.Coalesced, st.RequestsHandled, n-1, n+2)
	}
}

// Done when, fourth point, first half: an idle backend connection closes
// after --backend-idle-timeout and the next call reopens it, counted.
func TestIdleBackendClosesAndReopens(t *testing.T) {
	_, url := startBackend(t, "127.0.0.1:0")
	g := startGateway(t, "--backend", url, "--backend-idle-timeout", "200ms")
	if _, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Params: params(t, `[1]`)}); err != nil {
		t.Fatal(err)
	}
	g.waitLog("backend connection closed after being idle")
	st := g.waitStats(t, "the idle close in the stats", func(st *wsbridgev1.Stats) bool {
		return len(st.Backends) == 1 && st.Backends[0].IdleCloses == 1
	})
	if st.BackendConnected || st.BackendConnsOpen != 0 {
		t.Fatalf("after the idle close: connected %v, %d open", st.BackendConnected, st.BackendConnsOpen)
	}
	res, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Params: params(t, `[2]`)})
	if err != nil || string(must(res.Result.MarshalJSON())) != "[2]" {
		t.Fatalf("the call after the idle close: %v %v", res, err)
	}
	st = g.getStats(t)
	if row := st.Backends[0]; row.Connects != 2 || row.IdleCloses != 1 || row.Reconnects != 0 || st.Errors != 0 {
		t.Fatalf("after the reopen: %v (errors %d)", row, st.Errors)
	}
}

// Done when, fourth point, second half: a backend that closes with 1001
// (going away: the demo backend on SIGTERM) under load fails no call; its
// replacement on the same address is dialled and takes calls again.
func TestGoingAwayUnderLoadFailsNoCall(t *testing.T) {
	be1, url1, purl1, purl2 := twoDelayedBackends(t)
	g := startGateway(t, "--backend", purl1, "--backend", purl2, "--balance", "round-robin", "--retry-methods", "echo")
	load := startEchoLoad(t, g, 64)
	load.waitOK(t, 1000)
	if code := be1.signal(syscall.SIGTERM); code != 0 {
		t.Fatalf("backend exit %d", code)
	}
	g.waitLog("backend is going away; dialling its replacement")
	load.waitOK(t, 1000)
	// The replacement comes up on the same address and gets calls again.
	startBackend(t, strings.TrimSuffix(strings.TrimPrefix(url1, "ws://"), "/"))
	g.waitStats(t, "the replacement to be dialled and used", func(st *wsbridgev1.Stats) bool {
		row := backendRow(t, st, purl1)
		return row.Connects == 2 && row.State == wsbridgev1.BackendState_BACKEND_STATE_CONNECTED
	})
	sent := backendRow(t, g.getStats(t), purl1).RequestsSent
	load.waitOK(t, 1000)
	load.finish(t)
	st := g.getStats(t)
	if row := backendRow(t, st, purl1); row.RequestsSent <= sent {
		t.Errorf("the replacement took no calls: %v", row)
	}
	if st.Errors != 0 {
		t.Errorf("errors %d by reason %v", st.Errors, st.ErrorsByReason)
	}
	t.Logf("echo calls: %d ok; retried: %d", load.ok.Load(), st.Retries)
}

// Done when, third point (behaviour; the latency is measured by make
// bench): one backend 200 ms slow, --hedge-methods echo --hedge-after
// 20ms: every call succeeds with its own reply, hedges are counted, and
// the slow backend's copies are abandoned without harm.
func TestHedgingAroundSlowBackend(t *testing.T) {
	_, url1 := startBackend(t, "127.0.0.1:0")
	_, url2 := startBackend(t, "127.0.0.1:0")
	p1, slow := proxied(t, "slow", url1)
	addToxic(t, p1, `{"type":"latency","stream":"upstream","attributes":{"latency":200}}`)
	g := startGateway(t, "--backend", slow, "--backend", url2, "--balance", "round-robin",
		"--hedge-methods", "echo", "--hedge-after", "20ms")
	load := startEchoLoad(t, g, 8)
	load.waitOK(t, 500)
	load.finish(t)
	st := g.getStats(t)
	if st.Hedges == 0 || st.Errors != 0 {
		t.Fatalf("hedges %d, errors %d", st.Hedges, st.Errors)
	}
	t.Logf("%d calls, %d hedged; echo latency p50 %.1f ms p99 %.1f ms (not asserted: see make bench)", load.ok.Load(), st.Hedges, st.Latency.P50Ms, st.Latency.P99Ms)
}
