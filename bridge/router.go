package bridge

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsbridge/wsbridge/jsonrpc"
)

// router picks the backend of each request. It owns the routing state:
// the balancer's (a turn counter, smooth weighted round-robin), and each
// backend's circuit breaker and health (backend.mu guards those fields;
// only this file touches them). A backend is usable while its breaker is
// not open, its health call passes, and one of its slots is not backing
// off after a failed dial. When its breaker's cooldown is over
// (half-open), exactly one request probes it: the others are routed as if
// it were open until the probe's dial has succeeded or failed.
type router struct {
	// Static after newRouter.
	b       *Bridge
	balance Balance

	next atomic.Uint64 // ties among backends taken in turn
	rrMu sync.Mutex    // guards every backend's current (BalanceRoundRobin)
}

func newRouter(b *Bridge, balance Balance) *router {
	return &router{b: b, balance: balance}
}

// pick returns the backend for a request by the Balance, among the usable
// backends other than avoid (when there are others). With one backend it
// is always that one (its slots decide: fail fast, or wait for a dial).
// With several and none usable it returns nil: the request fails fast, or
// waits for a change with wait-for-ready. A dial holds no request that
// another backend could serve: when the balance picks a backend that is
// not ready while another usable one is, the request goes to a ready one
// (and an idle pick is dialled, for the requests that follow).
func (rt *router) pick(avoid *backend) *backend {
	for {
		active := rt.b.backends().active
		if len(active) == 1 {
			return active[0]
		}
		var cands, ready []*backend
		for _, be := range active {
			if be != avoid && be.usable() {
				cands = append(cands, be)
				if be.connectivity() == ConnReady {
					ready = append(ready, be)
				}
			}
		}
		if len(cands) == 0 {
			if avoid != nil && avoid.usable() && avoid.claim() {
				return avoid // the only one left
			}
			return nil
		}
		be := rt.balanced(cands)
		if len(ready) > 0 && be.connectivity() != ConnReady {
			if be.connectivity() == ConnIdle {
				be.pickSlot().kickDial()
			}
			be = rt.balanced(ready)
		}
		if be.claim() {
			return be
		}
		// Another request took the half-open breaker's probe meanwhile:
		// look again without it.
	}
}

// balanced picks among bes by the Balance.
func (rt *router) balanced(bes []*backend) *backend {
	switch rt.balance {
	case BalanceRoundRobin:
		return rt.weightedNext(bes)
	case BalanceLeastInFlight:
		return rt.leastWaiting(bes)
	}
	return rt.leastWaiting(lowestPriority(bes))
}

// lowestPriority returns the backends with the lowest Priority value, in
// their order.
func lowestPriority(bes []*backend) []*backend {
	best := bes[0].priority.Load()
	for _, be := range bes {
		best = min(best, be.priority.Load())
	}
	var out []*backend
	for _, be := range bes {
		if be.priority.Load() == best {
			out = append(out, be)
		}
	}
	return out
}

// leastWaiting returns the backend with the fewest requests waiting, ties
// taken in turn.
func (rt *router) leastWaiting(bes []*backend) *backend {
	if len(bes) == 1 {
		return bes[0]
	}
	start := int(rt.next.Add(1) % uint64(len(bes)))
	best, bestN := bes[start], bes[start].waiting()
	for i := 1; i < len(bes); i++ {
		be := bes[(start+i)%len(bes)]
		if n := be.waiting(); n < bestN {
			best, bestN = be, n
		}
	}
	return best
}

// weightedNext is smooth weighted round-robin (as nginx): each pick adds
// every candidate's weight to its current value and takes the largest,
// which then gives back the total.
func (rt *router) weightedNext(bes []*backend) *backend {
	rt.rrMu.Lock()
	defer rt.rrMu.Unlock()
	total := 0
	var best *backend
	for _, be := range bes {
		w := int(be.weight.Load())
		total += w
		be.current += w
		if best == nil || be.current > best.current {
			best = be
		}
	}
	best.current -= total
	return best
}

// pickSlot returns a slot of be: round-robin, passing over a slot that
// backs off for a connected one.
func (be *backend) pickSlot() *slot {
	n := uint64(len(be.slots))
	start := be.next.Add(1) - 1
	s := be.slots[start%n]
	if n == 1 || s.currentState() != StateBackoff {
		return s
	}
	for i := uint64(1); i < n; i++ {
		if other := be.slots[(start+i)%n]; other.currentState() == StateConnected {
			return other
		}
	}
	return s
}

// waiting returns the requests waiting for a reply on this backend.
func (be *backend) waiting() int64 {
	var n int64
	for _, s := range be.slots {
		if c := s.snapshot().conn; c != nil {
			n += c.pending.size.Load()
		}
	}
	return n
}

// BreakerState is a backend's circuit breaker.
type BreakerState int

// The breaker's states.
const (
	BreakerClosed   BreakerState = iota // calls flow
	BreakerOpen                         // failures in a row: calls go elsewhere until the cooldown ends
	BreakerHalfOpen                     // the cooldown is over: one call probes the backend
)

func (s BreakerState) String() string {
	return [...]string{"closed", "open", "half-open"}[s]
}

// breakerLocked is the breaker's state; be.mu must be held.
func (be *backend) breakerLocked(now time.Time) BreakerState {
	switch {
	case be.failures < be.b.opts.BreakerFailures:
		return BreakerClosed
	case now.Before(be.openUntil):
		return BreakerOpen
	}
	return BreakerHalfOpen
}

func (be *backend) breaker() BreakerState {
	be.mu.Lock()
	defer be.mu.Unlock()
	return be.breakerLocked(time.Now())
}

// probeTimeout is how long a half-open breaker's probe may go without an
// outcome before another request may probe: the dial it started is over
// by then, whatever became of the request.
func (be *backend) probeTimeout() time.Duration { return be.b.opts.DialTimeout + time.Second }

// usable reports whether requests may go to be now (see router): it is
// ready, connecting or idle (not failing), its breaker is not open (nor
// half-open with its probe taken), its health call passes, it does not
// lag, and it is not ejected.
func (be *backend) usable() bool { return be.unavailable(false) == "" }

// available reports whether be takes calls, for the stats and readiness:
// usable, but a half-open breaker whose probe is under way counts as
// available.
func (be *backend) available() bool { return be.unavailable(true) == "" }

// unavailable says why be takes no requests now, or "" when it does.
func (be *backend) unavailable(probeTakenOK bool) string {
	if be.retired.Load() {
		return UnavailableShutdown
	}
	switch be.connectivity() {
	case ConnTransientFailure:
		return UnavailableFailing
	case ConnShutdown:
		return UnavailableShutdown
	}
	be.mu.Lock()
	defer be.mu.Unlock()
	now := time.Now()
	switch {
	case be.healthErr != nil:
		return UnavailableHealth
	case be.lagging:
		return UnavailableLag
	case now.Before(be.ejectedUntil):
		return UnavailableEjected
	}
	switch be.breakerLocked(now) {
	case BreakerOpen:
		return UnavailableBreaker
	case BreakerHalfOpen:
		if !probeTakenOK && !be.probeAt.IsZero() && now.Sub(be.probeAt) < be.probeTimeout() {
			return UnavailableBreaker
		}
	}
	return ""
}

// claim takes the probe of a half-open breaker for the request being
// routed to be; it reports false when another request has taken it. A
// closed breaker needs no claim.
func (be *backend) claim() bool {
	be.mu.Lock()
	defer be.mu.Unlock()
	now := time.Now()
	switch be.breakerLocked(now) {
	case BreakerClosed:
		return true
	case BreakerOpen:
		return false
	}
	if !be.probeAt.IsZero() && now.Sub(be.probeAt) < be.probeTimeout() {
		return false
	}
	be.probeAt = now
	return true
}

// transportFailure notes a failed dial or a lost connection; at
// BreakerFailures in a row the breaker opens for BreakerCooldown (again,
// when it was half-open: the probe failed).
func (be *backend) transportFailure(cause error) {
	be.counters.transportErrors.Add(1)
	be.mu.Lock()
	be.failures++
	now := time.Now()
	open := be.failures >= be.b.opts.BreakerFailures && !now.Before(be.openUntil)
	if open {
		be.openUntil = now.Add(be.b.opts.BreakerCooldown)
		be.probeAt = time.Time{}
	}
	be.mu.Unlock()
	if open {
		be.counters.breakerOpens.Add(1)
		be.b.opts.Logger.Warn("backend circuit breaker open: calls go to other backends", "url", be.redactedURL,
			"failures", be.b.opts.BreakerFailures, "for", be.b.opts.BreakerCooldown, "err", cause)
		be.b.stateChange()
	}
}

// transportSuccess notes a dial or a reply that worked: the breaker
// closes.
func (be *backend) transportSuccess() {
	be.mu.Lock()
	was := be.failures >= be.b.opts.BreakerFailures
	be.failures, be.openUntil, be.probeAt = 0, time.Time{}, time.Time{}
	be.mu.Unlock()
	if was {
		be.b.stateChange()
	}
}

// healthLoop calls the health method on be every HealthInterval while be
// has an open connection (it dials nothing: an idle backend stays idle),
// and marks be unavailable while the call fails. A JSON-RPC error answer
// fails it too: the backend cannot do what the method asks (a misspelt
// method, a node not synced). With Options.MaxLag the result is read as a
// number (see lagCheck). It runs until ctx ends.
func (be *backend) healthLoop(ctx context.Context) {
	b := be.b
	t := time.NewTicker(b.opts.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		var open *slot
		for _, s := range be.slots {
			if s.currentState() == StateConnected {
				open = s
				break
			}
		}
		if open == nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, b.opts.HealthTimeout)
		res, err := b.internalCall(cctx, &request{method: b.opts.HealthMethod, slot: open.idx}, CallOptions{})
		cancel()
		if ctx.Err() != nil {
			return
		}
		var head uint64
		headOK := false
		if err == nil && b.opts.MaxLag > 0 {
			if head, headOK = jsonrpc.Quantity(res); !headOK {
				err = fmt.Errorf("the health method's result %.40s is not a number (decimal, or a 0x quantity)", res)
			}
		}
		be.mu.Lock()
		was := be.healthErr
		be.healthErr = err
		be.head, be.headOK = head, headOK
		be.mu.Unlock()
		if (was == nil) != (err == nil) {
			if err != nil {
				b.opts.Logger.Warn("backend health call failed: calls go to other backends", "url", be.redactedURL, "method", b.opts.HealthMethod, "err", err)
			} else {
				b.opts.Logger.Info("backend health call passes again", "url", be.redactedURL)
			}
			b.stateChange()
		}
		if b.opts.MaxLag > 0 {
			b.router.lagCheck()
		}
	}
}

// lagCheck marks the backends whose health value (a block number, any
// monotonic counter) trails the highest of the healthy, connected ones by
// more than Options.MaxLag: they get no calls until they catch up.
func (rt *router) lagCheck() {
	b := rt.b
	var top uint64
	active := rt.b.backends().active
	for _, be := range active {
		ready := be.connectivity() == ConnReady
		be.mu.Lock()
		if ready && be.headOK && be.healthErr == nil {
			top = max(top, be.head)
		}
		be.mu.Unlock()
	}
	for _, be := range active {
		be.mu.Lock()
		was := be.lagging
		be.lagging = be.headOK && top > be.head && top-be.head > b.opts.MaxLag
		now, head := be.lagging, be.head
		be.mu.Unlock()
		if was != now {
			if now {
				b.opts.Logger.Warn("backend lags: calls go to other backends", "url", be.redactedURL, "value", head, "highest", top, "max_lag", b.opts.MaxLag)
			} else {
				b.opts.Logger.Info("backend caught up", "url", be.redactedURL, "value", head, "highest", top)
			}
			b.stateChange()
		}
	}
}

// requestEnded takes the end of a request written to be: answered (err
// nil, or a JSON-RPC error), its reply lost, or timed out. It reports it
// to Options.OnBackendRequest, and is passive outlier detection
// (Options.OutlierFailures): a request whose reply was lost, or that went
// unanswered for OutlierTimeout at least before its deadline, counts
// against be, and OutlierFailures of them in a row eject it for
// OutlierEjection, unless no other backend would be left to take calls;
// any answer starts the count again.
func (be *backend) requestEnded(o *op, err error) {
	b := be.b
	var took time.Duration
	if o != nil {
		if at := o.sentAt.Load(); at != 0 {
			took = time.Duration(time.Now().UnixNano() - at)
			if f := b.opts.OnBackendRequest; f != nil {
				f(be.displayURL, took, err)
			}
		}
	}
	if b.opts.OutlierFailures <= 0 {
		return
	}
	failed := !answered(err)
	if CodeOf(err) == CodeDeadlineExceeded && took < b.opts.OutlierTimeout {
		return // the caller's deadline, too short to judge the backend by
	}
	be.mu.Lock()
	if !failed {
		be.outlierFailures = 0
		be.mu.Unlock()
		return
	}
	be.outlierFailures++
	eject := be.outlierFailures >= b.opts.OutlierFailures && !time.Now().Before(be.ejectedUntil)
	be.mu.Unlock()
	if !eject {
		return
	}
	others := false
	for _, o := range b.backends().active {
		if o != be && o.available() {
			others = true
		}
	}
	if !others {
		return // the last one standing is not ejected: calls would have nowhere to go
	}
	be.mu.Lock()
	be.ejectedUntil = time.Now().Add(b.opts.OutlierEjection)
	be.outlierFailures = 0
	be.mu.Unlock()
	be.counters.ejections.Add(1)
	b.opts.Logger.Warn("backend ejected: its requests failed in a row; calls go to other backends", "url", be.redactedURL,
		"failures", b.opts.OutlierFailures, "for", b.opts.OutlierEjection)
	b.stateChange()
}
