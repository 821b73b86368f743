package bridge

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsbridge/wsbridge/internal/window"
)

// BackendOptions configure one backend of a Bridge. Zero values take the
// Bridge's Options (Header, HTTPClient, Conns) or the defaults given.
type BackendOptions struct {
	// URL is the backend's ws:// or wss:// URL.
	URL string
	// Header is sent with every handshake to this backend.
	Header http.Header
	// HTTPClient dials this backend (TLS settings live in its Transport).
	HTTPClient *http.Client
	// Conns is the number of connections to this backend.
	Conns int
	// Priority orders backends for BalancePriority: the lowest value that
	// has an available backend takes the calls. Default 0.
	Priority int
	// Weight shares calls out under BalanceRoundRobin. Default 1.
	Weight int
}

// Balance is how a call picks among the available backends.
type Balance int

// The balancing policies.
const (
	// BalancePriority sends calls to the lowest Priority value that has an
	// available backend (failover: a standby with a higher value is dialled
	// only when needed), the least loaded of that group first.
	BalancePriority Balance = iota
	// BalanceRoundRobin takes the available backends in turn, by Weight.
	BalanceRoundRobin
	// BalanceLeastInFlight takes the available backend with the fewest
	// requests waiting for a reply.
	BalanceLeastInFlight
)

// ParseBalance reads a Balance from its name.
func ParseBalance(s string) (Balance, error) {
	switch s {
	case "priority", "":
		return BalancePriority, nil
	case "round-robin":
		return BalanceRoundRobin, nil
	case "least-inflight":
		return BalanceLeastInFlight, nil
	}
	return 0, fmt.Errorf("%q is not a balance: priority, round-robin or least-inflight", s)
}

func (b Balance) String() string {
	return [...]string{"priority", "round-robin", "least-inflight"}[b]
}

// backend is one backend of the Bridge: its connection slots, its health
// (the slots' dials, a circuit breaker over transport failures, an
// optional health call) and its counters.
type backend struct {
	// Static after newBackend.
	b           *Bridge
	idx         int
	opts        BackendOptions
	redactedURL string // for the gateway's own logs
	displayURL  string // for clients and stats
	slots       []*slot
	lat         *window.Latency // reply times of this backend's calls (write to reply)

	next atomic.Uint64 // round-robin cursor among slots

	mu sync.Mutex
	// Guarded by mu.
	failures  int       // consecutive transport failures (breaker)
	openUntil time.Time // the breaker is open until then
	healthErr error     // the last health call's error; nil when it passed
	current   int       // smooth weighted round-robin state

	counters backendCounters
}

// backendCounters are one backend's monotonic totals.
type backendCounters struct {
	connects, reconnects, dialFailures, idleCloses atomic.Uint64
	framesOut, requestsOut, transportErrors        atomic.Uint64
	breakerOpens                                   atomic.Uint64
}

func newBackend(b *Bridge, idx int, opts BackendOptions) *backend {
	return &backend{b: b, idx: idx, opts: opts, redactedURL: RedactURL(opts.URL), displayURL: DisplayURL(opts.URL),
		lat: window.NewLatency(6, 10*time.Second, nil)}
}

// transportFailure notes a failed dial or a lost connection; at
// BreakerFailures in a row the breaker opens for BreakerCooldown.
func (be *backend) transportFailure(cause error) {
	be.counters.transportErrors.Add(1)
	be.mu.Lock()
	be.failures++
	open := be.failures >= be.b.opts.BreakerFailures && !time.Now().Before(be.openUntil)
	if open {
		be.openUntil = time.Now().Add(be.b.opts.BreakerCooldown)
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
	be.failures, be.openUntil = 0, time.Time{}
	be.mu.Unlock()
	if was {
		be.b.stateChange()
	}
}

// BreakerState is a backend's circuit breaker.
type BreakerState int

// The breaker's states.
const (
	BreakerClosed   BreakerState = iota // calls flow
	BreakerOpen                         // failures in a row: calls go elsewhere until the cooldown ends
	BreakerHalfOpen                     // the cooldown is over: the next call probes the backend
)

func (s BreakerState) String() string {
	return [...]string{"closed", "open", "half-open"}[s]
}

func (be *backend) breaker() BreakerState {
	be.mu.Lock()
	defer be.mu.Unlock()
	switch {
	case be.failures < be.b.opts.BreakerFailures:
		return BreakerClosed
	case time.Now().Before(be.openUntil):
		return BreakerOpen
	}
	return BreakerHalfOpen
}

// available reports whether calls should go to this backend: its breaker
// is not open, its health call (if any) passes, and a slot is not backing
// off after a failed dial.
func (be *backend) available() bool {
	if be.breaker() == BreakerOpen {
		return false
	}
	be.mu.Lock()
	unhealthy := be.healthErr != nil
	be.mu.Unlock()
	if unhealthy {
		return false
	}
	for _, s := range be.slots {
		if s.currentState() != StateBackoff {
			return true
		}
	}
	return false
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

// pickBackend returns the backend for a call by the Bridge's Balance,
// among the available backends other than avoid (when there are others).
// When none is available it returns the first by priority that is not
// avoided, whose slot then fails fast (or waits, for wait-for-ready).
func (b *Bridge) pickBackend(avoid *backend) *backend {
	if len(b.backends) == 1 {
		return b.backends[0]
	}
	var cands []*backend
	for _, be := range b.backends {
		if be != avoid && be.available() {
			cands = append(cands, be)
		}
	}
	if len(cands) == 0 {
		for _, be := range b.backends {
			if be != avoid {
				cands = append(cands, be)
			}
		}
		return lowestPriority(cands)[0]
	}
	switch b.opts.Balance {
	case BalanceRoundRobin:
		return b.weightedNext(cands)
	case BalanceLeastInFlight:
		return b.leastWaiting(cands)
	}
	return b.leastWaiting(lowestPriority(cands))
}

// lowestPriority returns the backends with the lowest Priority value, in
// their order.
func lowestPriority(bes []*backend) []*backend {
	best := bes[0].opts.Priority
	for _, be := range bes {
		best = min(best, be.opts.Priority)
	}
	var out []*backend
	for _, be := range bes {
		if be.opts.Priority == best {
			out = append(out, be)
		}
	}
	return out
}

// leastWaiting returns the backend with the fewest requests waiting, ties
// taken in turn.
func (b *Bridge) leastWaiting(bes []*backend) *backend {
	if len(bes) == 1 {
		return bes[0]
	}
	start := int(b.nextBackend.Add(1) % uint64(len(bes)))
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
func (b *Bridge) weightedNext(bes []*backend) *backend {
	b.rrMu.Lock()
	defer b.rrMu.Unlock()
	total := 0
	var best *backend
	for _, be := range bes {
		w := be.opts.Weight
		total += w
		be.current += w
		if best == nil || be.current > best.current {
			best = be
		}
	}
	best.current -= total
	return best
}

// healthLoop calls the health method on be every HealthInterval while be
// has an open connection (it dials nothing: an idle backend stays idle),
// and marks be unavailable while the call fails. It runs until ctx ends.
func (be *backend) healthLoop(ctx context.Context) {
	b := be.b
	t := time.NewTicker(b.opts.HealthInterval)
	defer t.Stop()
	quoted := b.quote(b.opts.HealthMethod)
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
		_, err := b.attempt(cctx, quoted, nil, CallOptions{}, callSpec{slot: open.idx})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if CodeOf(err) == CodeBackendError {
			err = nil // it answered: a JSON-RPC error is still an answer
		}
		be.mu.Lock()
		was := be.healthErr
		be.healthErr = err
		be.mu.Unlock()
		if (was == nil) != (err == nil) {
			if err != nil {
				b.opts.Logger.Warn("backend health call failed: calls go to other backends", "url", be.redactedURL, "method", b.opts.HealthMethod, "err", err)
			} else {
				b.opts.Logger.Info("backend health call passes again", "url", be.redactedURL)
			}
			b.stateChange()
		}
	}
}
