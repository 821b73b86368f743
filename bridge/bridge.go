package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/wsbridge/wsbridge/internal/defaults"
	"github.com/wsbridge/wsbridge/internal/glob"
	"github.com/wsbridge/wsbridge/internal/window"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// Options configure a Bridge. A backend is required (URL, or Backends);
// every zero value means the default given.
type Options struct {
	// URL is the backend's ws:// or wss:// URL, when there is one backend
	// (Backends empty).
	URL string
	// Backends are the backends, when there are several: each gets its
	// own lazily dialled, shared connections, and each call goes to one of
	// them by Balance. Their zero fields take Header, HTTPClient and Conns.
	Backends []BackendOptions
	// Balance picks the backend of each call. Default BalancePriority.
	Balance Balance
	// BreakerFailures transport failures in a row (failed dials, lost
	// connections) open a backend's circuit breaker: it gets no calls for
	// BreakerCooldown, then one call probes it. Defaults 5 and 10 s.
	BreakerFailures int
	BreakerCooldown time.Duration
	// HealthMethod, if set, is called on each backend that has an open
	// connection every HealthInterval (default 10 s), with HealthTimeout
	// (default 2 s); a backend whose health call fails (a JSON-RPC error is
	// an answer, not a failure) gets no calls until it passes again.
	HealthMethod                  string
	HealthInterval, HealthTimeout time.Duration
	// MaxLag, with a HealthMethod, reads each health result as a number
	// (decimal, or a 0x quantity: eth_blockNumber's block height, any
	// monotonic counter): a backend whose value trails the highest of the
	// healthy, connected backends by more than MaxLag gets no calls until
	// it catches up. 0: off.
	MaxLag uint64
	// OutlierFailures, if positive, ejects a backend whose requests timed
	// out or lost their replies that many times in a row, for
	// OutlierEjection (default 30 s); the last backend taking calls is
	// never ejected. Passive outlier detection, as Envoy's.
	OutlierFailures int
	OutlierEjection time.Duration
	// OutlierTimeout is how long a request written to a backend must go
	// unanswered for its deadline to count against the backend (default
	// 1 s): a caller's own short deadline says nothing of the backend, and
	// must not let a client eject healthy backends.
	OutlierTimeout time.Duration
	// OnBackendRequest, if set, is called once for each request written
	// to a backend when it ends: answered (err nil, or an *Error with
	// CodeBackendError or CodeMalformedReply), its reply lost
	// (CodeReplyLost), or timed out (CodeDeadlineExceeded); took is the
	// time from its write. It runs on the Bridge's goroutines and must not
	// block (per-backend metrics).
	OnBackendRequest func(backend string, took time.Duration, err error)
	// IdleTimeout, if positive, closes a lazily dialled backend connection
	// that has had no call, subscription or listener for that long; the
	// next call dials again.
	IdleTimeout time.Duration
	// Methods are per-method policies (retry, hedging, deduplication, a
	// cache), by pattern; see MethodPolicy.
	Methods []MethodPolicy
	// CacheMaxEntries and CacheMaxBytes bound the reply cache of
	// MethodPolicy.CacheTTL. Defaults 10000 and 64 MiB.
	CacheMaxEntries int
	CacheMaxBytes   int64
	// Header is sent with every WebSocket handshake.
	Header http.Header
	// HTTPClient dials the backend (TLS settings live in its Transport).
	// Default: http.DefaultClient.
	HTTPClient *http.Client
	// Conns is the number of connections to each backend, used
	// round-robin. Default 1.
	Conns int
	// Eager dials at New and keeps redialling in the background after every
	// loss. Otherwise the first call dials, and after a loss the next call
	// does.
	Eager bool
	// DialTimeout bounds one dial, handshake included. Callers wait for a
	// dial under way, so it is also how long a call to an unresponsive
	// address takes to fail. Default 5 s.
	DialTimeout time.Duration
	// Backoff is the wait between failed dials.
	Backoff Backoff
	// PingInterval is the time between WebSocket pings on an idle or busy
	// connection. Default 15 s; negative disables pings.
	PingInterval time.Duration
	// PingTimeout is how long a pong may take before the connection counts
	// as lost. Default 5 s.
	PingTimeout time.Duration
	// WriteTimeout bounds one frame write; a backend that stops reading is
	// thereby detected. Default 10 s.
	WriteTimeout time.Duration
	// CallTimeout is the longest any call may take. Default 30 s.
	CallTimeout time.Duration
	// MaxInFlight is the most calls in flight at once; more are refused with
	// CodeOverloaded. Default 10000.
	MaxInFlight int
	// MaxMessageBytes caps a request to the backend (and a batch of them):
	// a larger request fails with CodeTooLarge before anything is sent.
	// Default 4 MiB.
	MaxMessageBytes int64
	// MaxReplyBytes caps a message from the backend. A larger one is
	// discarded as it is read, its first MaxReplyBytes aside: the callers
	// it names there (a JSON-RPC server writes "id" before "result") fail
	// with CodeTooLarge, and the connection stays up. Default 32 MiB,
	// go-ethereum's own WebSocket read limit.
	MaxReplyBytes int64
	// SubscribeMethods are the methods that create a backend subscription
	// when a Consumer calls them: patterns with at most one *, which
	// matches any run of characters (package glob). UnsubscribeMethods
	// pairs with it by index ("*_subscribe" with "*_unsubscribe":
	// eth_subscribe is undone by eth_unsubscribe).
	// Default: ["*_subscribe"] and ["*_unsubscribe"].
	SubscribeMethods   []string
	UnsubscribeMethods []string
	// MaxSubscriptionsPerConsumer caps the subscriptions one Consumer may
	// hold (pending ones included; a shared one counts for each consumer
	// and call); more fail with CodeOverloaded before anything is sent.
	// MaxListensPerConsumer caps the methods one Consumer may listen to.
	// 0: no limit.
	MaxSubscriptionsPerConsumer, MaxListensPerConsumer int
	// Resubscribe re-issues live subscriptions on a new connection after a
	// loss, and tells their consumers with a "wsbridge_gap" notification.
	// Otherwise a loss ends them with "wsbridge_subscriptionLost".
	Resubscribe bool
	// AllowMethods, if set, are the only methods clients may call or
	// notify: patterns in which * matches any run of characters ('/' and
	// '.' included) and every other character only itself (package glob).
	// DenyMethods are refused even if allowed. A refused call fails with
	// CodePermissionDenied before anything is sent.
	AllowMethods, DenyMethods []string
	// Batch sends the requests queued together as one JSON-RPC batch (an
	// array), for backends that handle batches: fewer frames for the
	// backend to parse. A backend answers a batch only once every call in
	// it is done, so a slow call delays the fast ones batched with it.
	Batch bool
	// DropErrorData removes the data member of backend error objects before
	// they reach callers (it may hold internals).
	DropErrorData bool
	// MaxMethodLength caps the length of a method name. Default 1024.
	MaxMethodLength int
	// OnStateChange, if set, is called whenever the Bridge's state (the
	// best of its slots, see State) or its readiness (see Ready) may have
	// changed, with the state at the time of the call. It runs on a
	// goroutine of the Bridge, one call at a time and never under a lock
	// of the Bridge, so it may call any method of the Bridge (Close
	// excepted). Changes that come while it runs are coalesced into one
	// more call. It is not called after Close returns.
	OnStateChange func(State)
	// TracerProvider, if set, traces each call to a backend as a client
	// span (see trace.go). Nil: no tracing, at no cost.
	TracerProvider trace.TracerProvider
	// TraceParam, with tracing on, adds the call's trace context to params
	// that are a JSON object, as the member of this name:
	// {"traceparent": "00-..."}. Empty: params go unchanged.
	TraceParam string
	// CancelMethod, if set, is sent as a notification {"id": <gateway id>}
	// when a caller gives up on a call the backend has already received
	// (e.g. "$/cancelRequest").
	CancelMethod string
	// Logger receives connection events. Default: discard.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.HTTPClient == nil {
		o.HTTPClient = http.DefaultClient
	}
	defaults.Positive(&o.Conns, 1)
	if len(o.Backends) == 0 {
		o.Backends = []BackendOptions{{URL: o.URL}}
	} else {
		o.Backends = append([]BackendOptions(nil), o.Backends...)
	}
	for i := range o.Backends {
		be := &o.Backends[i]
		if be.Header == nil {
			be.Header = o.Header
		}
		if be.HTTPClient == nil {
			be.HTTPClient = o.HTTPClient
		}
		if be.Conns <= 0 {
			be.Conns = o.Conns
		}
		if be.Weight <= 0 {
			be.Weight = 1
		}
	}
	defaults.Positive(&o.BreakerFailures, 5)
	defaults.Positive(&o.BreakerCooldown, 10*time.Second)
	defaults.Positive(&o.HealthInterval, 10*time.Second)
	defaults.Positive(&o.HealthTimeout, 2*time.Second)
	defaults.Positive(&o.OutlierEjection, 30*time.Second)
	defaults.Positive(&o.OutlierTimeout, time.Second)
	defaults.Positive(&o.CacheMaxEntries, 10000)
	defaults.Positive(&o.CacheMaxBytes, 64<<20)
	defaults.Positive(&o.DialTimeout, 5*time.Second)
	o.Backoff = o.Backoff.withDefaults()
	if o.PingInterval == 0 {
		o.PingInterval = 15 * time.Second
	}
	defaults.Positive(&o.PingTimeout, 5*time.Second)
	defaults.Positive(&o.WriteTimeout, 10*time.Second)
	defaults.Positive(&o.CallTimeout, 30*time.Second)
	defaults.Positive(&o.MaxInFlight, defaultMaxInFlight)
	defaults.Positive(&o.MaxMessageBytes, 4<<20)
	defaults.Positive(&o.MaxReplyBytes, 32<<20)
	defaults.Positive(&o.MaxMethodLength, 1024)
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o
}

// CallOptions are per-call settings.
type CallOptions struct {
	// Timeout, if positive, bounds the call below Options.CallTimeout. The
	// context's own deadline also applies; the earliest wins.
	Timeout time.Duration
	// WaitForReady makes the call wait for a connection while the Bridge
	// backs off after a failed dial, instead of failing with CodeUnavailable.
	WaitForReady bool
	// TraceParent is the span a call made with Go (which takes no context)
	// continues, when tracing is on (Options.TracerProvider).
	TraceParent trace.SpanContext
	// OnBackend, if set, is called with the display URL of the backend each
	// request of the call is written to (an access log's "backend"). It
	// runs on the goroutine that writes, and must not block.
	OnBackend func(url string)
}

// Bridge multiplexes calls over the backend connection(s). It is safe for
// concurrent use. Close it to stop its goroutines.
type Bridge struct {
	// Static after New.
	opts     Options
	lat      *window.Latency // calls that succeeded
	failLat  *window.Latency // calls that failed
	policies *policies       // per-method retry, hedging, dedup, cache

	router *router // picks each request's backend
	// set is the backends in effect (see backendSet); setMu serializes
	// its writers (SetBackends, retire) and orders them against Close,
	// and guards nextBackend, the index of the next backend made.
	set         atomic.Pointer[backendSet]
	setMu       sync.Mutex
	nextBackend int
	// attempt is b.send as an invoker, made once (a method value
	// allocates each time it is taken).
	attempt invoker
	// rules are the allow and deny lists in effect (SetRules replaces
	// them).
	rules atomic.Pointer[methodRules]

	// Lifetime: cancel ends runCtx, which stops every slot's run loop, the
	// health loops, retirements and the state notifier; wg waits for them.
	runCtx context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// stateChanged wakes the goroutine that calls Options.OnStateChange
	// (nil when unset). Buffered: a change is never lost, and changes
	// coalesce.
	stateChanged chan struct{}
	// changed is closed and replaced at every change of a slot's state or
	// a backend's breaker or health, for callers waiting for a backend to
	// become available (see awaitChange). Guarded by changedMu.
	changedMu sync.Mutex
	changed   chan struct{}

	hub          *hub
	tracer       trace.Tracer // nil without Options.TracerProvider
	cancelMethod []byte       // Options.CancelMethod as a JSON string; nil if unset
	quoted       sync.Map     // method -> []byte, see quote
	quotedN      atomic.Int64

	// Background work (unsubscribes, resubscribes): bgCtx ends at Close,
	// bgWG waits for it; bgMu orders goBackground against Close.
	bgMu     sync.Mutex
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup
	bgClosed bool

	closing  atomic.Bool
	draining atomic.Bool
	idleOnce sync.Once
	idle     chan struct{} // closed when draining and nothing is in flight
	nextID   atomic.Uint64 // request ids: unique for the life of the Bridge
	inFlight atomic.Int64
	// maxInFlight is Options.MaxInFlight, as SetMaxInFlight changes it.
	maxInFlight atomic.Int64
	counters    counters
	closeOnce   sync.Once
}

// counters are the Bridge's monotonic totals.
type counters struct {
	connects, reconnects, dialFailures atomic.Uint64
	messagesOut, messagesIn, framesOut atomic.Uint64
	retries, hedges                    atomic.Uint64
	timeouts, late, unknown            atomic.Uint64
	notifications, malformed, rejected atomic.Uint64
	backendRequests                    atomic.Uint64
	oversize                           atomic.Uint64 // messages over MaxReplyBytes
}

// methodRules are the allow and deny lists (Options.AllowMethods,
// DenyMethods).
type methodRules struct{ allow, deny []string }

// SetRules replaces the allow and deny lists and the method policies
// (Options.AllowMethods, DenyMethods, Methods) for the calls that start
// from now on: a reload. Calls under way keep the rules they started
// with.
func (b *Bridge) SetRules(allow, deny []string, methods []MethodPolicy) {
	b.rules.Store(&methodRules{allow: allow, deny: deny})
	b.policies.setMethods(methods)
}

// SetMaxInFlight changes Options.MaxInFlight for the calls that start
// from now on (a reload; 0 or less: the default).
func (b *Bridge) SetMaxInFlight(n int) {
	if n <= 0 {
		n = defaultMaxInFlight
	}
	b.maxInFlight.Store(int64(n))
}

// defaultMaxInFlight is Options.MaxInFlight's default.
const defaultMaxInFlight = 10000

// Check reports what New would refuse in opts, starting nothing.
func Check(opts Options) error {
	opts = opts.withDefaults()
	for _, be := range opts.Backends {
		if err := CheckURL(be.URL); err != nil {
			return err
		}
	}
	if err := validPatterns(opts.SubscribeMethods, opts.UnsubscribeMethods); err != nil {
		return fmt.Errorf("subscription methods: %w", err)
	}
	return nil
}

// SubscribeMatcher reports, for opts as New would take them, whether a
// method makes a backend subscription (see Bridge.IsSubscribeMethod), for
// checks made before a Bridge exists.
func SubscribeMatcher(opts Options) func(method string) bool {
	h := newHub(nil, hubOptions{SubscribeMethods: opts.SubscribeMethods, UnsubscribeMethods: opts.UnsubscribeMethods})
	return func(method string) bool {
		_, ok := h.unsubscribeFor(method)
		return ok
	}
}

// New validates opts and returns a running Bridge. With opts.Eager it starts
// dialling at once; otherwise nothing is dialled before the first call.
func New(opts Options) (*Bridge, error) {
	if err := Check(opts); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	b := &Bridge{
		opts:    opts,
		lat:     window.NewLatency(6, 10*time.Second, nil),
		failLat: window.NewLatency(6, 10*time.Second, nil),
		runCtx:  ctx,
		cancel:  cancel,
		idle:    make(chan struct{}),
		changed: make(chan struct{}),
	}
	b.rules.Store(&methodRules{allow: opts.AllowMethods, deny: opts.DenyMethods})
	b.maxInFlight.Store(int64(opts.MaxInFlight))
	b.attempt = b.send
	b.policies = newPolicies(b)
	if opts.TracerProvider != nil {
		b.tracer = opts.TracerProvider.Tracer(tracerName)
	}
	b.hub = newHub(b, hubOptions{
		SubscribeMethods: opts.SubscribeMethods, UnsubscribeMethods: opts.UnsubscribeMethods,
		MaxSubscriptionsPerConsumer: opts.MaxSubscriptionsPerConsumer, MaxListensPerConsumer: opts.MaxListensPerConsumer,
		Resubscribe: opts.Resubscribe, Logger: opts.Logger,
	})
	if opts.CancelMethod != "" {
		b.cancelMethod = jsonrpc.AppendString(nil, opts.CancelMethod)
	}
	b.bgCtx, b.bgCancel = context.WithCancel(context.Background())
	if f := opts.OnStateChange; f != nil {
		b.stateChanged = make(chan struct{}, 1)
		b.wg.Go(func() { b.notifyStates(ctx, f) })
	}
	set := &backendSet{}
	for _, bo := range opts.Backends {
		be := newBackend(ctx, b, b.nextBackend, len(set.slots), bo)
		b.nextBackend++
		set.active = append(set.active, be)
		set.slots = append(set.slots, be.slots...)
	}
	set.all = set.active
	b.set.Store(set)
	b.router = newRouter(b, opts.Balance)
	b.hub.listen = lowestPriority(set.active)[0].slots[0].idx
	for _, be := range set.active {
		be.start()
	}
	return b, nil
}

// notifyStates calls f after each state change until ctx is done (see
// Options.OnStateChange). It is the only caller of f.
func (b *Bridge) notifyStates(ctx context.Context, f func(State)) {
	for {
		select {
		case <-b.stateChanged:
			f(b.State())
		case <-ctx.Done():
			return
		}
	}
}

// stateChange wakes notifyStates and the callers in awaitChange; it never
// blocks.
func (b *Bridge) stateChange() {
	b.changedMu.Lock()
	close(b.changed)
	b.changed = make(chan struct{})
	b.changedMu.Unlock()
	if b.stateChanged == nil {
		return
	}
	select {
	case b.stateChanged <- struct{}{}:
	default:
	}
}

// changes returns the channel closed at the next change of a slot's
// state or a backend's breaker, health, lag or ejection.
func (b *Bridge) changes() <-chan struct{} {
	b.changedMu.Lock()
	defer b.changedMu.Unlock()
	return b.changed
}

// awaitChange waits until changes (from b.changes) is closed, or for the
// Backoff base at most (a breaker's cooldown and an ejection end without
// an event). It reports false when ctx ended first.
func (b *Bridge) awaitChange(ctx context.Context, changes <-chan struct{}) bool {
	t := time.NewTimer(b.opts.Backoff.Base)
	defer t.Stop()
	select {
	case <-changes:
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	return true
}

// awaitNextChange is awaitChange for the next change from now.
func (b *Bridge) awaitNextChange(ctx context.Context) bool { return b.awaitChange(ctx, b.changes()) }

// dialling reports whether a dial is under way on any slot.
func (b *Bridge) dialling() bool {
	for _, s := range b.backends().slots {
		if s.currentState() == StateConnecting {
			return true
		}
	}
	return false
}

// CheckURL reports whether raw can be a backend URL, in an error that says
// what is expected (without the URL's credentials).
func CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme == "" && u.Host == "") || u.Opaque != "" {
		// Not the parse error: url.Error quotes the URL, credentials and all.
		shown := raw
		if i := strings.LastIndex(shown, "@"); i >= 0 {
			shown = "REDACTED" + shown[i:]
		}
		if i := strings.Index(shown, "?"); i >= 0 {
			shown = shown[:i] + "?REDACTED"
		}
		return fmt.Errorf("backend URL %s is not a URL: write it as ws://host:port/path or wss://host:port/path", shown)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return fmt.Errorf("backend URL %s: the scheme must be ws:// or wss://, not %q", RedactURL(raw), u.Scheme+"://")
	}
	if u.Host == "" {
		return fmt.Errorf("backend URL %s has no host: write it as %s://host:port/path", RedactURL(raw), u.Scheme)
	}
	return nil
}

// RedactURL returns u for the gateway's own logs and --print-config: any
// userinfo and query are replaced by "REDACTED", and so is every path
// segment of keyLikeSegment characters or more. Short segments ("ws",
// "v3", "rpc") stay, so an operator sees which endpoint is meant; the long
// ones are where Infura- and Alchemy-style URLs carry their API key.
// Clients see DisplayURL, which has no path at all.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	if u.User != nil {
		u.User = url.User("REDACTED")
	}
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery = "REDACTED"
	}
	u.Fragment = ""
	if u.Path != "" {
		segs := strings.Split(u.EscapedPath(), "/")
		for i, s := range segs {
			if len(s) >= keyLikeSegment {
				segs[i] = "REDACTED"
			}
		}
		u.RawPath = ""
		u.Path = strings.Join(segs, "/")
	}
	return u.String()
}

// keyLikeSegment is the length from which a backend URL's path segment is
// taken for a key: API keys are 32 characters and more, endpoint names a
// few.
const keyLikeSegment = 20

// DisplayURL returns scheme://host:port of a backend URL: what clients,
// stats and the dashboard may see of it. Userinfo, path and query may hold
// secrets and are left out.
func DisplayURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(invalid backend URL)"
	}
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "wss" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	return u.Scheme + "://" + host
}

// URL returns the backends' scheme://host:port (see DisplayURL), comma
// separated.
func (b *Bridge) URL() string {
	var urls []string
	for _, be := range b.backends().active {
		urls = append(urls, be.displayURL)
	}
	return strings.Join(urls, ", ")
}

// LogURL returns the backend URLs as the gateway's own logs show them (see
// RedactURL), comma separated.
func (b *Bridge) LogURL() string {
	var urls []string
	for _, be := range b.backends().active {
		urls = append(urls, be.redactedURL)
	}
	return strings.Join(urls, ", ")
}

// Call sends a JSON-RPC request and returns the backend's result. params
// must be nil or valid JSON: an object or an array. On failure the error is
// an *Error; a JSON-RPC error reply has CodeBackendError and the error object
// in Error.RPC.
//
// Methods that create or end a subscription (IsSubscriptionMethod) are
// refused with CodeUnsupported: only a Consumer can own a subscription.
//
// The method's policy (Options.Methods) applies: the call may be answered
// from the cache, joined to an identical call under way, retried on
// another backend, or hedged.
func (b *Bridge) Call(ctx context.Context, method string, params json.RawMessage, co CallOptions) (json.RawMessage, error) {
	return b.callOrNotify(ctx, method, params, co, false)
}

// Notify sends a JSON-RPC notification. It returns once the notification has
// been written to the backend socket. Subscription methods are refused as
// in Call: a subscribe sent as a notification could not be routed, and an
// unsubscribe could end another client's subscription.
func (b *Bridge) Notify(ctx context.Context, method string, params json.RawMessage, co CallOptions) error {
	_, err := b.callOrNotify(ctx, method, params, co, true)
	return err
}

func (b *Bridge) callOrNotify(ctx context.Context, method string, params json.RawMessage, co CallOptions, notify bool) (json.RawMessage, error) {
	if err := b.plainMethod(method); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, b.abortError(b.ctxCode(ctx)) // not even a dial for a caller already gone
	}
	c, err := b.newCall(ctx, request{method: method, params: params, slot: -1, notify: notify, waitForReady: co.WaitForReady, onBackend: co.OnBackend}, co)
	if err != nil {
		return nil, err
	}
	inv := b.attempt // notifications get no policy
	if !notify {
		inv = b.policies.chain(method)
	}
	return b.wait(ctx, c, inv, b.deadlineOf(ctx, co))
}

// plainMethod refuses a subscription method outside a Consumer's call.
func (b *Bridge) plainMethod(method string) error {
	if b.IsSubscriptionMethod(method) {
		return newError(CodeUnsupported, fmt.Sprintf("%s makes or ends a subscription, which only a client that receives notifications can own", method), nil)
	}
	return nil
}

// recordLatency records a call's duration, apart for failed calls: a
// backend that fails fast must not make the latency look good.
func (b *Bridge) recordLatency(d time.Duration, err error) {
	if err == nil {
		b.lat.Record(d)
	} else {
		b.failLat.Record(d)
	}
}

// begin admits a call (counting it in flight; the caller must call b.done
// once it ends) and checks it; it returns the method as a JSON string.
func (b *Bridge) begin(method string, params json.RawMessage) ([]byte, error) {
	// Count first, then check draining: Drain relies on that order.
	if !b.admit() {
		b.counters.rejected.Add(1)
		return nil, newError(CodeOverloaded, fmt.Sprintf("too many calls in flight (limit %d)", b.maxInFlight.Load()), nil)
	}
	fail := func(err *Error) ([]byte, error) {
		b.done()
		return nil, err
	}
	if b.draining.Load() {
		return fail(newError(CodeDraining, "gateway is shutting down", nil))
	}
	if method == "" {
		return fail(newError(CodeInvalidArgument, "method is empty", nil))
	}
	if len(method) > b.opts.MaxMethodLength {
		return fail(newError(CodeInvalidArgument, fmt.Sprintf("method name longer than %d bytes", b.opts.MaxMethodLength), nil))
	}
	if !b.MethodAllowed(method) {
		return fail(newError(CodePermissionDenied, "method not allowed", nil))
	}
	if !jsonrpc.ValidParams(params) {
		return fail(newError(CodeInvalidArgument, "params must be a JSON object or array", nil))
	}
	if int64(len(method)+len(params)) > b.opts.MaxMessageBytes {
		return fail(b.tooLarge()) // before escaping a huge method
	}
	quoted := b.quote(method)
	if int64(jsonrpc.RequestSize(quoted, params)) > b.opts.MaxMessageBytes {
		return fail(b.tooLarge())
	}
	return quoted, nil
}

// maxQuoted bounds the cache of quoted method names.
const maxQuoted = 1024

// quote returns method as a JSON string. Callers use few methods, so the
// quoted forms are cached (up to maxQuoted); the result must not be
// modified.
func (b *Bridge) quote(method string) []byte {
	if q, ok := b.quoted.Load(method); ok {
		return q.([]byte)
	}
	q := jsonrpc.AppendString(nil, method)
	if b.quotedN.Load() < maxQuoted {
		if _, loaded := b.quoted.LoadOrStore(method, q); !loaded {
			b.quotedN.Add(1)
		}
	}
	return q
}

// timeout is the longest a call with co may take.
func (b *Bridge) timeout(co CallOptions) time.Duration {
	if co.Timeout > 0 && co.Timeout < b.opts.CallTimeout {
		return co.Timeout
	}
	return b.opts.CallTimeout
}

func (b *Bridge) tooLarge() *Error {
	return newError(CodeTooLarge, fmt.Sprintf("request exceeds the %d-byte message limit; nothing was sent", b.opts.MaxMessageBytes), nil)
}

// errNotSent is internal: the connection broke before the request was
// written, so it may be sent again.
var errNotSent = errors.New("connection closed before the request was written")

// admit counts a call in flight unless MaxInFlight are already.
func (b *Bridge) admit() bool {
	for {
		n := b.inFlight.Load()
		if n >= b.maxInFlight.Load() {
			return false
		}
		if b.inFlight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (b *Bridge) done() {
	if b.inFlight.Add(-1) == 0 && b.draining.Load() {
		b.idleOnce.Do(func() { close(b.idle) })
	}
}

// BeginDrain makes every later call fail with CodeDraining. Calls in flight
// go on.
func (b *Bridge) BeginDrain() {
	b.draining.Store(true)
	if b.inFlight.Load() == 0 {
		b.idleOnce.Do(func() { close(b.idle) })
	}
}

// Drain refuses new calls with CodeDraining (see BeginDrain) and waits until
// the calls in flight have ended or ctx is done.
func (b *Bridge) Drain(ctx context.Context) error {
	b.BeginDrain()
	select {
	case <-b.idle:
		return nil
	default:
	}
	select {
	case <-b.idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close fails every call still in flight with CodeDraining, closes the
// backend connections with status 1001 (going away) and waits for every
// goroutine of the Bridge to exit.
func (b *Bridge) Close() error {
	b.closeOnce.Do(func() {
		b.draining.Store(true)
		b.setMu.Lock() // no SetBackends starts a backend from now on
		b.closing.Store(true)
		b.setMu.Unlock()
		b.bgMu.Lock()
		b.bgClosed = true
		b.bgMu.Unlock()
		b.bgCancel()
		b.cancel()
		b.wg.Wait()
		b.bgWG.Wait()
	})
	return nil
}

// goBackground runs f in a goroutine that Close cancels and waits for. After
// Close it does nothing and returns false.
func (b *Bridge) goBackground(f func(ctx context.Context)) bool {
	b.bgMu.Lock()
	defer b.bgMu.Unlock()
	if b.bgClosed {
		return false
	}
	b.bgWG.Go(func() { f(b.bgCtx) })
	return true
}

// State is the state of a backend connection slot.
type State int

// Slot states. With several connections the Bridge reports the best state
// of any slot.
const (
	StateDisconnected State = iota
	StateBackoff
	StateConnecting
	StateConnected
)

func (s State) String() string {
	switch s {
	case StateDisconnected:
		return "disconnected"
	case StateConnecting:
		return "connecting"
	case StateBackoff:
		return "backoff"
	case StateConnected:
		return "connected"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Stats is a snapshot of the Bridge's counters.
type Stats struct {
	URL          string // see DisplayURL
	State        State
	Ready        bool // see Ready
	ConnsOpen    int
	Connects     uint64 // successful dials
	Reconnects   uint64 // successful dials after a loss
	DialFailures uint64
	MessagesOut  uint64 // messages written to the backend
	MessagesIn   uint64 // messages read from the backend (batch elements count one each)
	InFlight     int64  // calls and notifications not yet ended
	Pending      int64  // requests waiting for a reply in the pending tables
	Timeouts     uint64
	Late         uint64 // replies after the caller gave up
	Unknown      uint64 // replies whose id matched nothing
	// Notifications from the backend (messages without an id).
	Notifications uint64
	// Frames or messages that were not valid JSON-RPC, replies to nothing
	// routable included.
	Malformed uint64
	// Requests the backend sent to the gateway (dropped).
	BackendRequests uint64
	// Messages from the backend over MaxReplyBytes, discarded (a reply's
	// callers fail with CodeTooLarge; a notification is lost).
	OversizeReplies uint64
	Rejected        uint64 // refused by MaxInFlight
	// Latency of the calls that succeeded, and of those that failed.
	Latency, FailureLatency window.Summary
	// Subscriptions live at the backend (shared ones count once), the
	// clients' subscriptions (a shared one counts once per subscribe
	// call, pending ones included), consumers registered, notifications
	// delivered to consumers, and subscriptions re-issued after a loss.
	Subscriptions, ClientSubscriptions, Consumers int64
	Delivered, Resubscribes                       uint64
	// Dropped counts notifications held for a subscribe reply past the
	// hold limit, and lost.
	Dropped uint64
	// LastDialError is the most recent failed dial's error (as clients may
	// see it, without the URL's path), and LastDialErrorAt its time; zero
	// when no dial has failed.
	LastDialError   string
	LastDialErrorAt time.Time
	// FramesOut counts the WebSocket frames written to backends (a batch
	// is one frame); Retries the calls sent again after their connection
	// broke (MethodPolicy.Retry), Hedges the copies sent to a second
	// backend, Coalesced the calls that joined an identical one under way,
	// CacheHits the calls answered from the cache.
	FramesOut, Retries, Hedges, Coalesced, CacheHits uint64
	// Backends has a row per backend, in the order configured.
	Backends []BackendStats
}

// BackendStats are one backend's figures.
type BackendStats struct {
	URL   string // see DisplayURL
	State State  // the best of its connections
	// Connectivity is its state as a gRPC channel's (see Connectivity).
	Connectivity Connectivity
	// Available: it takes calls (see Balance, Bridge.Ready); when not,
	// Unavailable says why (UnavailableFailing, ...).
	Available   bool
	Unavailable string
	Breaker     BreakerState
	// LastDialError is its most recent failed dial's error and
	// LastDialErrorAt its time (zero when none has failed).
	LastDialError   string
	LastDialErrorAt time.Time
	// Head is its health method's last value read as a number (MaxLag),
	// when there is one.
	Head    uint64
	HeadSet bool
	// Ejections counts its passive outlier ejections (OutlierFailures).
	Ejections uint64
	// HealthError is the last failed health call's error ("" when it
	// passes, or when there is no health method).
	HealthError string
	// Waiting counts the requests waiting for its reply now.
	Waiting                                        int64
	Connects, Reconnects, DialFailures, IdleCloses uint64
	FramesOut, RequestsOut, TransportErrors        uint64
	BreakerOpens                                   uint64
	// Latency is the time from writing a request to its reply.
	Latency window.Summary
}

// Stats returns a snapshot of the counters.
func (b *Bridge) Stats() Stats {
	st := Stats{
		URL:             b.URL(),
		Connects:        b.counters.connects.Load(),
		Reconnects:      b.counters.reconnects.Load(),
		DialFailures:    b.counters.dialFailures.Load(),
		MessagesOut:     b.counters.messagesOut.Load(),
		MessagesIn:      b.counters.messagesIn.Load(),
		InFlight:        b.inFlight.Load(),
		Timeouts:        b.counters.timeouts.Load(),
		Late:            b.counters.late.Load(),
		Unknown:         b.counters.unknown.Load(),
		Notifications:   b.counters.notifications.Load(),
		Malformed:       b.counters.malformed.Load(),
		BackendRequests: b.counters.backendRequests.Load(),
		OversizeReplies: b.counters.oversize.Load(),
		Rejected:        b.counters.rejected.Load(),
		Latency:         b.lat.Summary(),
		FailureLatency:  b.failLat.Summary(),
		Delivered:       b.hub.delivered.Load(),
		Resubscribes:    b.hub.resubscribes.Load(),
		Dropped:         b.hub.dropped.Load(),
		Ready:           b.Ready(),
	}
	st.Subscriptions, st.ClientSubscriptions, st.Consumers = b.hub.stats()
	st.FramesOut, st.Retries, st.Hedges = b.counters.framesOut.Load(), b.counters.retries.Load(), b.counters.hedges.Load()
	st.Coalesced, st.CacheHits = b.policies.coalesced.Load(), b.policies.cacheHits.Load()
	set := b.backends()
	for _, be := range set.all {
		why := be.unavailable(true)
		bs := BackendStats{URL: be.displayURL, Connectivity: be.connectivity(), Available: why == "", Unavailable: why,
			Breaker: be.breaker(), Waiting: be.waiting(),
			Connects: be.counters.connects.Load(), Reconnects: be.counters.reconnects.Load(),
			DialFailures: be.counters.dialFailures.Load(), IdleCloses: be.counters.idleCloses.Load(),
			FramesOut: be.counters.framesOut.Load(), RequestsOut: be.counters.requestsOut.Load(),
			TransportErrors: be.counters.transportErrors.Load(), BreakerOpens: be.counters.breakerOpens.Load(),
			Ejections: be.counters.ejections.Load(), Latency: be.lat.Summary()}
		be.mu.Lock()
		if be.healthErr != nil {
			bs.HealthError = be.healthErr.Error()
		}
		bs.Head, bs.HeadSet = be.head, be.headOK
		be.mu.Unlock()
		for _, s := range be.slots {
			snap := s.snapshot()
			bs.State = max(bs.State, snap.state)
			if snap.lastErr != nil && snap.lastErrAt.After(bs.LastDialErrorAt) {
				bs.LastDialError, bs.LastDialErrorAt = snap.lastErr.Error(), snap.lastErrAt
			}
		}
		st.Backends = append(st.Backends, bs)
	}
	for _, s := range set.slots {
		snap := s.snapshot()
		st.State = max(st.State, snap.state)
		if snap.conn != nil {
			st.ConnsOpen++
			st.Pending += snap.conn.pending.size.Load()
		}
		if snap.lastErr != nil && snap.lastErrAt.After(st.LastDialErrorAt) {
			st.LastDialError, st.LastDialErrorAt = snap.lastErr.Error(), snap.lastErrAt
		}
	}
	return st
}

// MethodAllowed reports whether clients may call method (see
// Options.AllowMethods and DenyMethods).
func (b *Bridge) MethodAllowed(method string) bool {
	r := b.rules.Load()
	if glob.Any(r.deny, method) {
		return false
	}
	return len(r.allow) == 0 || glob.Any(r.allow, method)
}

// State returns the Bridge's state: the best state of its slots.
func (b *Bridge) State() State {
	st := StateDisconnected
	for _, s := range b.backends().slots {
		st = max(st, s.currentState())
	}
	return st
}

// Ready reports whether the Bridge can be expected to carry calls: while
// at least one backend is available (ready, or connecting or idle with no
// failure known; its breaker not open, its health call passing, not
// lagging, not ejected). A lazy Bridge that has not dialled yet is ready:
// nothing says the backend is down. One whose every backend failed its
// last dial is not, until a dial succeeds: the failing backends redial in
// the background, so this becomes true again without a call to try them.
func (b *Bridge) Ready() bool {
	for _, be := range b.backends().active {
		if be.available() {
			return true
		}
	}
	return false
}

// MaxMessageBytes returns the message size limit in effect.
func (b *Bridge) MaxMessageBytes() int64 { return b.opts.MaxMessageBytes }
