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
	// ID names the backend across SetBackends: an entry whose ID is a
	// running backend's keeps that backend (its connections, its
	// subscriptions), taking the entry's Priority and Weight; any other
	// setting it changes is not applied, so an ID should cover them.
	// Default: URL.
	ID string
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
	opts        BackendOptions // Priority and Weight as configured first: see priority, weight
	redactedURL string         // for the gateway's own logs
	displayURL  string         // for clients and stats
	slots       []*slot
	lat         *window.Latency // reply times of this backend's calls (write to reply)
	// Lifetime: its slots' run loops and its health loop run under ctx
	// (a child of the Bridge's) and wg; cancel ends them when the backend
	// is retired (SetBackends removed it) and its calls have drained.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// priority and weight are BackendOptions' (SetBackends changes them).
	priority, weight atomic.Int64
	// retired is set when SetBackends removes the backend: it takes no
	// new request, and its connections close once its calls are over.
	retired atomic.Bool

	next atomic.Uint64 // round-robin cursor among slots

	// The router's state of this backend (see router.go).
	mu sync.Mutex
	// Guarded by mu.
	failures  int       // consecutive transport failures (breaker)
	openUntil time.Time // the breaker is open until then
	probeAt   time.Time // when the half-open breaker's one probe was taken; zero: not taken
	healthErr error     // the last health call's error; nil when it passed
	head      uint64    // the health method's last value, read as a number (Options.MaxLag)
	headOK    bool      // head was read
	lagging   bool      // head trails the others' by more than Options.MaxLag
	// Passive outlier detection (Options.OutlierFailures): requests that
	// failed in a row (timeouts, lost replies), and the end of an ejection.
	outlierFailures int
	ejectedUntil    time.Time
	// Guarded by router.rrMu.
	current int // smooth weighted round-robin state

	counters backendCounters
}

// backendCounters are one backend's monotonic totals.
type backendCounters struct {
	connects, reconnects, dialFailures, idleCloses atomic.Uint64
	framesOut, requestsOut, transportErrors        atomic.Uint64
	breakerOpens, ejections                        atomic.Uint64
}

// newBackend makes backend idx and its slots, numbered from firstSlot;
// start runs them.
func newBackend(ctx context.Context, b *Bridge, idx, firstSlot int, opts BackendOptions) *backend {
	be := &backend{b: b, idx: idx, opts: opts, redactedURL: RedactURL(opts.URL), displayURL: DisplayURL(opts.URL),
		lat: window.NewLatency(6, 10*time.Second, nil)}
	be.ctx, be.cancel = context.WithCancel(ctx)
	be.priority.Store(int64(opts.Priority))
	be.weight.Store(int64(opts.Weight))
	for i := range opts.Conns {
		be.slots = append(be.slots, newSlot(b, be, firstSlot+i))
	}
	return be
}

// start runs be's slots and health loop, each counted in the Bridge's
// wait group (Close waits for them) and in be's (retire waits for them).
func (be *backend) start() {
	run := func(f func(context.Context)) {
		be.b.wg.Add(1)
		be.wg.Add(1)
		go func() {
			defer be.b.wg.Done()
			defer be.wg.Done()
			f(be.ctx)
		}()
	}
	for _, s := range be.slots {
		run(s.run)
	}
	if be.b.opts.HealthMethod != "" {
		run(be.healthLoop)
	}
}

// busy reports whether a request is waiting for a reply on one of be's
// connections, or for their writers.
func (be *backend) busy() bool {
	for _, s := range be.slots {
		if c := s.openConn(); c != nil && (c.pending.size.Load() > 0 || c.sendq.Len() > 0) {
			return true
		}
	}
	return false
}
