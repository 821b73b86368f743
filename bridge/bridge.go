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

	"github.com/wsbridge/wsbridge/internal/glob"
	"github.com/wsbridge/wsbridge/internal/window"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// Options configure a Bridge. Only URL is required; every zero value means
// the default given.
type Options struct {
	// URL is the backend's ws:// or wss:// URL.
	URL string
	// Header is sent with every WebSocket handshake.
	Header http.Header
	// HTTPClient dials the backend (TLS settings live in its Transport).
	// Default: http.DefaultClient.
	HTTPClient *http.Client
	// Conns is the number of backend connections, used round-robin.
	// Default 1.
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
	// MaxMessageBytes caps a message in either direction. A larger reply
	// closes the connection with 1009; a larger request fails with
	// CodeTooLarge before anything is sent. Default 4 MiB.
	MaxMessageBytes int64
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
	if o.Conns <= 0 {
		o.Conns = 1
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	o.Backoff = o.Backoff.withDefaults()
	if o.PingInterval == 0 {
		o.PingInterval = 15 * time.Second
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = 5 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 30 * time.Second
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 10000
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 4 << 20
	}
	if o.MaxMethodLength <= 0 {
		o.MaxMethodLength = 1024
	}
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
}

// Bridge multiplexes calls over the backend connection(s). It is safe for
// concurrent use. Close it to stop its goroutines.
type Bridge struct {
	// Static after New.
	opts        Options
	redactedURL string // for the gateway's own logs: userinfo and query redacted
	displayURL  string // for clients and stats: scheme, host and port only
	slots       []*slot
	lat         *window.Latency // calls that succeeded
	failLat     *window.Latency // calls that failed

	// Lifetime: cancel stops every slot's run loop and the state notifier;
	// wg waits for them.
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// stateChanged wakes the goroutine that calls Options.OnStateChange
	// (nil when unset). Buffered: a change is never lost, and changes
	// coalesce.
	stateChanged chan struct{}

	hub          *hub
	cancelMethod []byte   // Options.CancelMethod as a JSON string; nil if unset
	quoted       sync.Map // method -> []byte, see quote
	quotedN      atomic.Int64

	// Background work (unsubscribes, resubscribes): bgCtx ends at Close,
	// bgWG waits for it; bgMu orders goBackground against Close.
	bgMu     sync.Mutex
	bgCtx    context.Context
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup
	bgClosed bool

	closing   atomic.Bool
	draining  atomic.Bool
	idleOnce  sync.Once
	idle      chan struct{} // closed when draining and nothing is in flight
	nextID    atomic.Uint64 // request ids: unique for the life of the Bridge
	nextSlot  atomic.Uint64 // round-robin cursor
	inFlight  atomic.Int64
	counters  counters
	closeOnce sync.Once
}

// counters are the Bridge's monotonic totals.
type counters struct {
	connects, reconnects, dialFailures atomic.Uint64
	messagesOut, messagesIn            atomic.Uint64
	timeouts, late, unknown            atomic.Uint64
	notifications, malformed, rejected atomic.Uint64
	backendRequests                    atomic.Uint64
}

// New validates opts and returns a running Bridge. With opts.Eager it starts
// dialling at once; otherwise nothing is dialled before the first call.
func New(opts Options) (*Bridge, error) {
	opts = opts.withDefaults()
	if err := CheckURL(opts.URL); err != nil {
		return nil, err
	}
	if err := validPatterns(opts.SubscribeMethods, opts.UnsubscribeMethods); err != nil {
		return nil, fmt.Errorf("subscription methods: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Bridge{
		opts:        opts,
		redactedURL: RedactURL(opts.URL),
		displayURL:  DisplayURL(opts.URL),
		lat:         window.NewLatency(6, 10*time.Second, nil),
		failLat:     window.NewLatency(6, 10*time.Second, nil),
		cancel:      cancel,
		idle:        make(chan struct{}),
	}
	b.hub = newHub(b, opts.SubscribeMethods, opts.UnsubscribeMethods)
	if opts.CancelMethod != "" {
		b.cancelMethod = jsonrpc.AppendString(nil, opts.CancelMethod)
	}
	b.bgCtx, b.bgCancel = context.WithCancel(context.Background())
	if f := opts.OnStateChange; f != nil {
		b.stateChanged = make(chan struct{}, 1)
		b.wg.Go(func() { b.notifyStates(ctx, f) })
	}
	for i := range opts.Conns {
		s := newSlot(b, i)
		b.slots = append(b.slots, s)
		b.wg.Go(func() { s.run(ctx) })
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

// stateChange wakes notifyStates; it never blocks.
func (b *Bridge) stateChange() {
	if b.stateChanged == nil {
		return
	}
	select {
	case b.stateChanged <- struct{}{}:
	default:
	}
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

// RedactURL returns u with any userinfo and query replaced by "REDACTED",
// for the gateway's own logs. The path stays: it tells an operator which
// endpoint is meant, but it may hold a key (Infura- and Alchemy-style), so
// clients see DisplayURL instead.
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
	return u.String()
}

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

// URL returns the backend's scheme://host:port (see DisplayURL).
func (b *Bridge) URL() string { return b.displayURL }

// LogURL returns the backend URL as the gateway's own logs show it (see
// RedactURL).
func (b *Bridge) LogURL() string { return b.redactedURL }

// Call sends a JSON-RPC request and returns the backend's result. params
// must be nil or valid JSON: an object or an array. On failure the error is
// an *Error; a JSON-RPC error reply has CodeBackendError and the error object
// in Error.RPC.
//
// Methods that create or end a subscription (IsSubscriptionMethod) are
// refused with CodeUnsupported: only a Consumer can own a subscription.
func (b *Bridge) Call(ctx context.Context, method string, params json.RawMessage, co CallOptions) (json.RawMessage, error) {
	if err := b.plainMethod(method); err != nil {
		return nil, err
	}
	return b.do(ctx, method, params, co, callSpec{slot: -1})
}

// Notify sends a JSON-RPC notification. It returns once the notification has
// been written to the backend socket. Subscription methods are refused as
// in Call: a subscribe sent as a notification could not be routed, and an
// unsubscribe could end another client's subscription.
func (b *Bridge) Notify(ctx context.Context, method string, params json.RawMessage, co CallOptions) error {
	if err := b.plainMethod(method); err != nil {
		return err
	}
	_, err := b.do(ctx, method, params, co, callSpec{slot: -1, notify: true})
	return err
}

// plainMethod refuses a subscription method outside a Consumer's call.
func (b *Bridge) plainMethod(method string) error {
	if b.IsSubscriptionMethod(method) {
		return newError(CodeUnsupported, fmt.Sprintf("%s makes or ends a subscription, which only a client that receives notifications can own", method), nil)
	}
	return nil
}

// callSpec is what the package's own callers (subscriptions) add to a call.
type callSpec struct {
	notify bool
	// slot pins the call to one connection slot; -1 means round-robin.
	slot int
	// onResult runs on the connection's reader when a successful reply
	// arrives, before the reader handles the next message (also for a reply
	// that comes after the caller gave up). Subscriptions use it to route
	// the notifications that may follow the reply at once.
	onResult resultHook
}

type resultHook func(slot int, result json.RawMessage)

func (b *Bridge) do(ctx context.Context, method string, params json.RawMessage, co CallOptions, spec callSpec) (json.RawMessage, error) {
	if ctx.Err() != nil {
		return nil, b.ctxError(ctx) // not even a dial for a caller already gone
	}
	quoted, err := b.begin(method, params)
	if err != nil {
		return nil, err
	}
	defer b.done()
	timeout := b.timeout(co)
	// A caller whose own deadline comes first needs no timer of ours.
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > timeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	start := time.Now()
	res, err := b.attempt(ctx, quoted, params, co, spec)
	if !spec.notify {
		b.recordLatency(time.Since(start), err)
	}
	return res, err
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
		return nil, newError(CodeOverloaded, fmt.Sprintf("too many calls in flight (limit %d)", b.opts.MaxInFlight), nil)
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

// attempt sends the request on a connection and waits for its outcome. When
// a connection breaks before the request was written, it tries again on the
// next connection with a new id.
func (b *Bridge) attempt(ctx context.Context, quotedMethod []byte, params json.RawMessage, co CallOptions, spec callSpec) (json.RawMessage, error) {
	s := b.pickSlot(spec.slot)
	for {
		c, err := s.conn(ctx, co.WaitForReady)
		if err != nil {
			return nil, err
		}
		id := b.nextID.Add(1)
		frame := jsonrpc.AppendRequest(make([]byte, 0, jsonrpc.RequestSize(quotedMethod, params)), id, !spec.notify, quotedMethod, params)
		o := newOp(id, spec.notify, frame)
		o.onResult = spec.onResult
		res, err := c.roundTrip(ctx, o)
		if errors.Is(err, errNotSent) {
			continue
		}
		return res, err
	}
}

// pickSlot returns slot idx, or with idx < 0 the next slot round-robin. A
// slot backing off after failures is passed over for a connected one, so
// that one bad connection of a pool does not fail calls the others can
// carry.
func (b *Bridge) pickSlot(idx int) *slot {
	if idx >= 0 {
		return b.slots[idx]
	}
	n := uint64(len(b.slots))
	start := b.nextSlot.Add(1) - 1
	s := b.slots[start%n]
	if n == 1 || s.currentState() != StateBackoff {
		return s
	}
	for i := uint64(1); i < n; i++ {
		if other := b.slots[(start+i)%n]; other.currentState() == StateConnected {
			return other
		}
	}
	return s
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
		if n >= int64(b.opts.MaxInFlight) {
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

// deadlineSlack is how close to its deadline a cancellation counts as a
// timeout: a gRPC client cancels the stream when its deadline passes, and
// that can reach the server a little before the server's own timer fires.
const deadlineSlack = 20 * time.Millisecond

// ctxError turns a context error into a coded error.
func (b *Bridge) ctxError(ctx context.Context) *Error {
	dl, hasDeadline := ctx.Deadline()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || (hasDeadline && time.Until(dl) < deadlineSlack) {
		b.counters.timeouts.Add(1)
		return newError(CodeDeadlineExceeded, "deadline exceeded waiting for the backend", ctx.Err())
	}
	if b.closing.Load() {
		return newError(CodeDraining, "gateway is shutting down", nil)
	}
	return newError(CodeCanceled, "call cancelled by the caller", ctx.Err())
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
		b.closing.Store(true)
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
}

// Stats returns a snapshot of the counters.
func (b *Bridge) Stats() Stats {
	st := Stats{
		URL:             b.displayURL,
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
		Rejected:        b.counters.rejected.Load(),
		Latency:         b.lat.Summary(),
		FailureLatency:  b.failLat.Summary(),
		Delivered:       b.hub.delivered.Load(),
		Resubscribes:    b.hub.resubscribes.Load(),
		Dropped:         b.hub.dropped.Load(),
		Ready:           b.Ready(),
	}
	st.Subscriptions, st.ClientSubscriptions, st.Consumers = b.hub.stats()
	for _, s := range b.slots {
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
	if glob.Any(b.opts.DenyMethods, method) {
		return false
	}
	return len(b.opts.AllowMethods) == 0 || glob.Any(b.opts.AllowMethods, method)
}

// State returns the Bridge's state: the best state of its slots.
func (b *Bridge) State() State {
	st := StateDisconnected
	for _, s := range b.slots {
		st = max(st, s.currentState())
	}
	return st
}

// Ready reports whether the Bridge can be expected to carry calls: false
// once every slot's last dial failed, until a dial succeeds. A lazy Bridge
// that has not dialled yet, or that lost a connection and has not dialled
// since, is ready: nothing says the backend is down.
func (b *Bridge) Ready() bool {
	for _, s := range b.slots {
		if s.ready() {
			return true
		}
	}
	return false
}

// MaxMessageBytes returns the message size limit in effect.
func (b *Bridge) MaxMessageBytes() int64 { return b.opts.MaxMessageBytes }
