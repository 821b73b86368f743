package server

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/invariants"
)

// Faults with several backends, each behind its own toxiproxy: one is
// blackholed, flaps or slows down while calls flow. Each test checks the
// invariants (no hung call, no misdelivery, no id seen twice, nothing left
// pending) and that the stats account for every call.

// load runs callers calling method with extra params until stop is
// closed; it returns the outcomes by code.
func (r *rig) load(t *testing.T, callers int, method, extra string, timeout time.Duration, stop <-chan struct{}) func() map[codes.Code]int {
	var mu sync.Mutex
	out := map[codes.Code]int{}
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				code, _ := r.call(t, method, extra, timeout)
				mu.Lock()
				out[code]++
				mu.Unlock()
			}
		})
	}
	return func() map[codes.Code]int {
		wg.Wait()
		return out
	}
}

// toxicOn adds a toxic to backend i's proxy.
func (r *rig) toxicOn(t *testing.T, i int, js string) {
	t.Helper()
	if _, err := r.tps[i].Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		t.Fatal(err)
	}
}

// waitReplies waits until the gateway has read n replies from its
// backends.
func (r *rig) waitReplies(t *testing.T, n uint64) {
	t.Helper()
	bridgetest.Eventually(t, fmt.Sprintf("%d replies", n), func() bool { return r.h.srv.Bridge().Stats().MessagesIn >= n })
}

// accounted fails t unless the gateway's stats count every call made and
// every failure.
func (r *rig) accounted(t *testing.T, outcomes map[codes.Code]int) {
	t.Helper()
	total, failed := 0, 0
	for code, n := range outcomes {
		total += n
		if code != codes.OK {
			failed += n
		}
	}
	st, err := r.h.stats.GetStats(ctxT(t), &wsbridgev1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.RequestsHandled != uint64(total) || st.Errors != uint64(failed) {
		t.Errorf("stats count %d requests and %d errors; the callers made %d and saw %d fail", st.RequestsHandled, st.Errors, total, failed)
	}
}

// Blackholed: one of two backends stops passing bytes either way (the
// socket stays open). The backend ping finds it within the ping timeout;
// the retryable calls written to it are sent to the other backend, and
// calls keep flowing there. No call fails, none hangs.
func TestBackendsOneBlackholed(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRigN(t, 2, func(o *Options) {
		o.Bridge.Balance = bridge.BalanceRoundRobin
		o.Bridge.PingInterval, o.Bridge.PingTimeout = 50*time.Millisecond, 200*time.Millisecond
		o.Bridge.DialTimeout = 300 * time.Millisecond
		o.Bridge.Methods = []bridge.MethodPolicy{{Pattern: "echo", Retry: true}}
	})
	stop := make(chan struct{})
	wait := r.load(t, 16, "echo", "", 3*time.Second, stop)
	r.waitReplies(t, 500)
	for _, stream := range []string{"upstream", "downstream"} {
		r.toxicOn(t, 0, `{"type":"timeout","stream":"`+stream+`","attributes":{"timeout":0}}`)
	}
	// Calls go on: 1,000 more succeed while the first backend is dark.
	r.waitReplies(t, r.h.srv.Bridge().Stats().MessagesIn+1000)
	close(stop)
	outcomes := wait()
	if outcomes[codes.OK] == 0 || len(outcomes) != 1 {
		t.Errorf("outcomes %v; want only OK", outcomes)
	}
	st := r.h.srv.Bridge().Stats()
	if dark := st.Backends[0]; dark.State == bridge.StateConnected || dark.TransportErrors == 0 {
		t.Errorf("the blackholed backend: %+v", dark)
	}
	t.Logf("outcomes %v, retried %d", outcomes, st.Retries)
	r.accounted(t, outcomes)
	r.tps[0].Toxics.ResetToxics(t.Context())
	r.finish(t, 2)
}

// Flapping: one of two backends goes down and up every 100 ms while calls
// flow. Retryable calls never fail (a call written to the flapping one is
// sent once more, to the other; an unwritten one moves); each id reaches a
// backend once.
func TestBackendsOneFlapping(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRigN(t, 2, func(o *Options) {
		o.Bridge.Balance = bridge.BalanceRoundRobin
		o.Bridge.Backoff = bridge.Backoff{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}
		o.Bridge.BreakerCooldown = 50 * time.Millisecond // probed again soon: it keeps flapping under traffic
		o.Bridge.Methods = []bridge.MethodPolicy{{Pattern: "slow", Retry: true}}
	})
	stop := make(chan struct{})
	flaps := flap(r.tps[0], 100*time.Millisecond, stop)
	wait := r.load(t, 20, "slow", ",5", 2*time.Second, stop)
	// Traffic across several flaps (each 200 ms).
	for range 12 {
		r.waitReplies(t, r.h.srv.Bridge().Stats().MessagesIn+100)
	}
	close(stop)
	outcomes := wait()
	downs := flaps()
	if outcomes[codes.OK] == 0 || len(outcomes) != 1 {
		t.Errorf("outcomes %v; want only OK", outcomes)
	}
	st := r.h.srv.Bridge().Stats()
	if st.Backends[0].TransportErrors == 0 || st.Backends[0].Connects < 2 {
		t.Errorf("the flapping did not show: %+v", st.Backends[0])
	}
	t.Logf("outcomes %v over %d flaps; retried %d; flapping backend %+v", outcomes, downs, st.Retries, st.Backends[0])
	r.accounted(t, outcomes)
	r.finish(t, 2)
}

// Slow: one of two backends answers 100 ms late. least-inflight sends it
// only the calls that find it with no more waiting than the fast one, so
// the fast one takes most of the calls; every call succeeds.
func TestBackendsOneSlowLeastInFlight(t *testing.T) {
	invariants.Goroutines(t, toxiproxyLeaks...)
	r := newRigN(t, 2, func(o *Options) { o.Bridge.Balance = bridge.BalanceLeastInFlight })
	r.toxicOn(t, 0, `{"type":"latency","stream":"upstream","attributes":{"latency":100}}`)
	stop := make(chan struct{})
	wait := r.load(t, 16, "echo", "", 5*time.Second, stop)
	r.waitReplies(t, 2000)
	close(stop)
	outcomes := wait()
	if len(outcomes) != 1 || outcomes[codes.OK] == 0 {
		t.Errorf("outcomes %v; want only OK", outcomes)
	}
	st := r.h.srv.Bridge().Stats()
	slow, fast := st.Backends[0].RequestsOut, st.Backends[1].RequestsOut
	if fast < 5*slow {
		t.Errorf("the slow backend took %d calls, the fast one %d: least-inflight did not route around it", slow, fast)
	}
	t.Logf("slow backend %d calls, fast backend %d", slow, fast)
	r.accounted(t, outcomes)
	r.tps[0].Toxics.ResetToxics(t.Context())
	r.finish(t, 2)
}
