package bridge

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsbridge/wsbridge/internal/glob"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// Gateway notifications sent to consumers, never by the backend.
const (
	// NotifySubscriptionLost ends a subscription: params
	// {"subscription": id, "reason": text} for a subscription made by a
	// subscribe call, {"methods": [...], "reason": text} for listened methods.
	NotifySubscriptionLost = "wsbridge_subscriptionLost"
	// NotifyGap says, at once when the backend connection is lost (with
	// Options.Resubscribe), that notifications stop and may be missed until
	// the subscription is re-issued or the listeners hear another backend:
	// params {"subscription": id, "reason": text} or {"methods": [...],
	// "reason": text}. Notifications then come again under the same id.
	NotifyGap = "wsbridge_gap"
)

// hub routes backend notifications to consumers, and shares and tracks the
// subscriptions consumers make.
//
// A notification whose params.subscription names a live subscription goes
// to that subscription's owners only. Any other notification goes to the
// consumers listening to its method, and only when it comes from the
// listen slot (the first connection of one backend): a backend that
// broadcasts to every connection would otherwise deliver it once per
// pooled connection, and several backends once each. When the listen
// slot's backend is lost, listeners move with Resubscribe to another
// available backend (after wsbridge_gap), or end.
type hub struct {
	// Static after newHub.
	link hubLink
	opts hubOptions
	// subPatterns and unsubPatterns are the paired glob patterns.
	subPatterns, unsubPatterns []string

	mu        sync.Mutex
	consumers map[*Consumer]struct{}   // guarded by mu
	byKey     map[string]*subscription // guarded by mu: method and params -> subscription
	byID      map[subRef]*subscription // guarded by mu: live subscriptions by backend id
	// byClientID holds the subscriptions by the id their clients know
	// (jsonrpc.IDKey): each is unique, whichever backend or connection
	// made it. Guarded by mu.
	byClientID map[string]*subscription
	// ending holds the subscriptions being unsubscribed at the backend:
	// notifications it still sends for them until it replies belong to no
	// one, and must not fall through to method listeners. Guarded by mu.
	ending map[subRef]int
	// listen is the listen slot's index. Guarded by mu.
	listen int

	delivered    atomic.Uint64
	resubscribes atomic.Uint64
	dropped      atomic.Uint64 // held notifications past maxHeld
}

type subRef struct {
	slot int
	id   string // the backend's subscription id, as jsonrpc.IDKey
}

type subState int

const (
	subPending       subState = iota // the subscribe call is under way
	subLive                          // routed by backend id
	subResubscribing                 // the connection was lost; being re-issued
	subDead                          // removed from the hub
)

// subscription is one backend subscription, shared by every consumer that
// subscribed with the same method and params.
type subscription struct {
	// Static.
	key, method, unsubMethod string
	params                   json.RawMessage
	ready                    chan struct{}      // closed when the subscribe call has ended
	cancel                   context.CancelFunc // ends the subscribe call

	// Guarded by hub.mu.
	state     subState
	owners    map[*Consumer]int // subscribe calls per consumer
	slot      int
	clientID  json.RawMessage // the id consumers were given
	backendID json.RawMessage // the id at the backend now (differs after a resubscribe)
	res       json.RawMessage // the subscribe call's result, when it made no subscription
	err       error           // why the subscribe call failed
}

func newHub(link hubLink, opts hubOptions) *hub {
	sub, unsub := opts.SubscribeMethods, opts.UnsubscribeMethods
	if sub == nil && unsub == nil {
		sub, unsub = []string{"*_subscribe"}, []string{"*_unsubscribe"}
	}
	return &hub{
		link: link, opts: opts,
		subPatterns: sub, unsubPatterns: unsub,
		consumers:  map[*Consumer]struct{}{},
		byKey:      map[string]*subscription{},
		byID:       map[subRef]*subscription{},
		byClientID: map[string]*subscription{},
		ending:     map[subRef]int{},
	}
}

// validPatterns checks the subscribe/unsubscribe pattern lists.
func validPatterns(sub, unsub []string) error {
	if len(sub) != len(unsub) {
		return fmt.Errorf("%d subscribe patterns but %d unsubscribe patterns: they pair by position", len(sub), len(unsub))
	}
	for _, p := range append(append([]string{}, sub...), unsub...) {
		if strings.Count(p, "*") > 1 {
			return fmt.Errorf("pattern %q: only one * may stand for any text", p)
		}
	}
	return nil
}

// unsubscribeFor returns the unsubscribe method paired with a subscribe
// method, and whether method is a subscribe method at all.
func (h *hub) unsubscribeFor(method string) (string, bool) {
	for i, p := range h.subPatterns {
		wild, ok := glob.Capture(p, method)
		if !ok {
			continue
		}
		return strings.Replace(h.unsubPatterns[i], "*", wild, 1), true
	}
	return "", false
}

func (h *hub) isUnsubscribe(method string) bool {
	for _, p := range h.unsubPatterns {
		if _, ok := glob.Capture(p, method); ok {
			return true
		}
	}
	return false
}

// Consumer is one downstream client of the Bridge that receives
// notifications (a WebSocket client, a gRPC stream). Its calls go through
// the hub so that its subscriptions are routed to it, shared with identical
// ones, and released when it closes.
type Consumer struct {
	// Static.
	h       *hub
	deliver func(method string, params json.RawMessage)

	// dmu serializes deliveries to this consumer and orders them against
	// Close: deliver runs with dmu held, and never after Close set dclosed.
	// Lock order: dmu before hub.mu.
	dmu     sync.Mutex
	dclosed bool // guarded by dmu

	// budget counts this consumer's subscriptions and listened methods,
	// with those of the consumers it shares it with (one client's).
	budget *Budget

	// Guarded by h.mu.
	methods map[string]bool // listened methods; "*" means all
	subs    map[*subscription]int
	// holding keeps the notifications of subscriptions whose subscribe
	// reply the client has not been sent yet (see CallHeld).
	holding map[*subscription][]heldNote
	closed  bool
}

type heldNote struct {
	method string
	params json.RawMessage
}

// maxHeld bounds the notifications held for one subscribe reply; those
// past it are dropped and counted (Stats.Dropped).
const maxHeld = 4096

// A Budget is what the consumers that share it may hold together: one
// client connection's, however many streams it opens. Its limits are
// Options.MaxSubscriptionsPerConsumer (subscribe calls held, pending ones
// included; a shared subscription counts for each consumer and call) and
// Options.MaxListensPerConsumer (listened methods, each consumer's
// counted). The zero value is an empty budget; a consumer made without
// one has its own.
type Budget struct {
	// Guarded by the hub's mu.
	subs, listens int
}

// ConsumerOption configures a consumer (NewConsumer).
type ConsumerOption func(*Consumer)

// WithBudget makes the consumer share budget with the other consumers
// that have it.
func WithBudget(budget *Budget) ConsumerOption {
	return func(c *Consumer) { c.budget = budget }
}

// NewConsumer registers a consumer. deliver receives each notification
// routed to it. It runs on a goroutine of the Bridge (a connection's
// reader, or the goroutine of a call that releases held notifications),
// one call at a time and in order for each subscription; never after
// Close has returned. It must not block (queue or drop, and end the
// consumer if it cannot keep up), and must not call the consumer's Close.
// Close the consumer when the client leaves.
func (b *Bridge) NewConsumer(deliver func(method string, params json.RawMessage), opts ...ConsumerOption) *Consumer {
	// The maps are made on the first listen or subscription: most clients
	// never make one, and each idle client should cost little.
	c := &Consumer{h: b.hub, deliver: deliver}
	for _, o := range opts {
		o(c)
	}
	if c.budget == nil {
		c.budget = new(Budget)
	}
	b.hub.mu.Lock()
	b.hub.consumers[c] = struct{}{}
	b.hub.mu.Unlock()
	return c
}

// send delivers one notification unless the consumer is closed.
func (c *Consumer) send(method string, params json.RawMessage) bool {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	if c.dclosed {
		return false
	}
	c.deliver(method, params)
	return true
}

// Listen adds methods whose notifications the consumer receives ("*": all).
// Notifications only flow over an open connection, so a lazy Bridge dials
// now, and keeps redialling while anyone listens. Past
// Options.MaxListensPerConsumer it fails with CodeOverloaded and adds
// none.
func (c *Consumer) Listen(methods ...string) error {
	c.h.mu.Lock()
	added := 0
	seen := map[string]bool{}
	for _, m := range methods {
		if !c.methods[m] && !seen[m] {
			added++
			seen[m] = true
		}
	}
	if max := c.h.opts.MaxListensPerConsumer; max > 0 && c.budget.listens+added > max {
		n := c.budget.listens + added
		c.h.mu.Unlock()
		return newError(CodeOverloaded, fmt.Sprintf("would listen to %d methods; the limit per client is %d", n, max), nil)
	}
	if c.methods == nil {
		c.methods = map[string]bool{}
	}
	for _, m := range methods {
		c.methods[m] = true
	}
	c.budget.listens += added
	c.h.mu.Unlock()
	c.h.link.dial(c.h.listenSlot())
	return nil
}

// Unlisten removes listened methods.
func (c *Consumer) Unlisten(methods ...string) {
	c.h.mu.Lock()
	for _, m := range methods {
		if c.methods[m] {
			delete(c.methods, m)
			c.budget.listens--
		}
	}
	c.h.mu.Unlock()
}

// Listening returns the listened methods.
func (c *Consumer) Listening() []string {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	return listening(c)
}

func listening(c *Consumer) []string {
	var ms []string
	for m := range c.methods {
		ms = append(ms, m)
	}
	return ms
}

// Notify forwards a notification to the backend (see Bridge.Notify).
func (c *Consumer) Notify(ctx context.Context, method string, params json.RawMessage, co CallOptions) error {
	return c.h.link.Notify(ctx, method, params, co)
}

// Call is Bridge.Call for this consumer. A subscribe method creates (or
// shares) a subscription owned by the consumer; an unsubscribe method
// releases one of the consumer's own subscriptions, and reaches the
// backend only when no other consumer shares it.
func (c *Consumer) Call(ctx context.Context, method string, params json.RawMessage, co CallOptions) (json.RawMessage, error) {
	res, release, err := c.CallHeld(ctx, method, params, co)
	release()
	return res, err
}

// CallHeld is Call for a caller that still has to pass the reply on: the
// notifications of a subscription the call creates or joins are held back
// until release is called, so that a client never sees a subscription's
// notification before the reply that gave it the subscription id. Call
// release exactly once, after queueing the reply (also when err != nil).
func (c *Consumer) CallHeld(ctx context.Context, method string, params json.RawMessage, co CallOptions) (json.RawMessage, func(), error) {
	if unsub, ok := c.h.unsubscribeFor(method); ok {
		return c.subscribe(ctx, method, unsub, params, co)
	}
	if c.h.isUnsubscribe(method) {
		res, err := c.unsubscribe(ctx, method, params, co)
		return res, noRelease, err
	}
	res, err := c.h.link.Call(ctx, method, params, co)
	return res, noRelease, err
}

func noRelease() {}

// Go is Bridge.Go for this consumer, with CallHeld's release: call it once
// the reply is queued. Subscribe and unsubscribe calls, which the hub
// tracks, run on a goroutine of the Bridge.
func (c *Consumer) Go(method string, params json.RawMessage, co CallOptions, done func(res json.RawMessage, release func(), err error)) (cancel func()) {
	if !c.h.isSubscriptionMethod(method) {
		return c.h.link.Go(method, params, co, func(res json.RawMessage, err error) { done(res, noRelease, err) })
	}
	ctx, stop := context.WithCancel(c.h.link.bgContext())
	started := c.h.link.background(func(context.Context) {
		defer stop()
		res, release, err := c.CallHeld(ctx, method, params, co)
		done(res, release, err)
	})
	if !started {
		stop()
		done(nil, noRelease, newError(CodeDraining, "gateway is shutting down", nil))
	}
	return stop
}

// subscribe creates or joins the subscription for method and params, and
// waits until its subscribe call has ended or ctx is done. The backend
// call belongs to the subscription, not to the consumer that happened to
// come first: it runs on a goroutine of the Bridge, and ends early only
// when every consumer waiting for it has left. So one caller that gives up
// never becomes the outcome of the others.
func (c *Consumer) subscribe(ctx context.Context, method, unsub string, params json.RawMessage, co CallOptions) (json.RawMessage, func(), error) {
	h := c.h
	var compact bytes.Buffer
	if len(params) > 0 && json.Compact(&compact, params) != nil {
		return nil, noRelease, newError(CodeInvalidArgument, "params are not valid JSON", nil)
	}
	key := method + "\x00" + compact.String()

	h.mu.Lock()
	if c.closed {
		h.mu.Unlock()
		return nil, noRelease, newError(CodeCanceled, "consumer closed", nil)
	}
	if max := h.opts.MaxSubscriptionsPerConsumer; max > 0 && c.budget.subs >= max {
		h.mu.Unlock()
		return nil, noRelease, newError(CodeOverloaded, fmt.Sprintf("too many subscriptions for this client (limit %d)", max), nil)
	}
	sub := h.byKey[key]
	if sub == nil {
		callCtx, cancel := context.WithCancel(h.link.bgContext())
		sub = &subscription{key: key, method: method, unsubMethod: unsub, params: params,
			ready: make(chan struct{}), cancel: cancel, owners: map[*Consumer]int{}}
		wait := CallOptions{WaitForReady: co.WaitForReady}
		if !h.link.background(func(context.Context) { h.subscribeAtBackend(callCtx, sub, wait) }) {
			h.mu.Unlock()
			cancel()
			return nil, noRelease, newError(CodeDraining, "gateway is shutting down", nil)
		}
		h.byKey[key] = sub
	}
	sub.owners[c]++
	if c.subs == nil {
		c.subs, c.holding = map[*subscription]int{}, map[*subscription][]heldNote{}
	}
	c.subs[sub]++
	c.budget.subs++
	if _, ok := c.holding[sub]; !ok {
		c.holding[sub] = nil
	}
	h.mu.Unlock()
	release := func() { h.release(c, sub) }

	var timeout <-chan time.Time
	if co.Timeout > 0 {
		t := time.NewTimer(co.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-sub.ready:
	case <-ctx.Done():
		h.drop(c, sub)
		return nil, release, h.link.ctxError(ctx)
	case <-timeout:
		h.drop(c, sub)
		h.link.countTimeout()
		return nil, release, newError(CodeDeadlineExceeded, "deadline exceeded waiting for the backend", context.DeadlineExceeded)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if sub.state == subLive || sub.state == subResubscribing {
		return sub.clientID, release, nil
	}
	// The call failed, or its result was no subscription id: nothing to
	// route, and every waiter gets that outcome.
	h.dropLocked(c, sub, 1)
	return sub.res, release, sub.err
}

// subscribeAtBackend makes sub's subscribe call and records its outcome
// for every consumer waiting on sub.ready. Its ctx ends when all of them
// have left (see dropLocked) or the Bridge closes.
func (h *hub) subscribeAtBackend(ctx context.Context, sub *subscription, co CallOptions) {
	defer sub.cancel()
	res, err := h.link.request(ctx, &request{method: sub.method, params: sub.params, slot: -1, onResult: func(slot int, value json.RawMessage) {
		h.activate(sub, slot, value)
	}}, co)
	h.mu.Lock()
	sub.res, sub.err = res, err
	if err != nil || sub.state == subPending {
		h.removeLocked(sub)
	}
	close(sub.ready)
	h.mu.Unlock()
}

// release delivers what was held for c's subscribe reply, and stops
// holding. It delivers with c.dmu held from before it stops holding, so
// the held notifications reach c before any routed after.
func (h *hub) release(c *Consumer, sub *subscription) {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	h.mu.Lock()
	notes, ok := c.holding[sub]
	delete(c.holding, sub)
	h.mu.Unlock()
	if !ok || c.dclosed {
		return
	}
	for _, n := range notes {
		c.deliver(n.method, n.params)
	}
	h.delivered.Add(uint64(len(notes)))
}

// activate makes sub live once the backend answered its subscribe call. It
// runs on the reader, before the reader handles the next message, so the
// notifications that follow the reply find their subscription.
func (h *hub) activate(sub *subscription, slot int, id json.RawMessage) {
	if !isScalarID(id) {
		return
	}
	h.mu.Lock()
	if sub.state != subPending || len(sub.owners) == 0 {
		// Every owner left while the call was under way, or this is a late
		// reply: undo it at the backend.
		sub.state = subDead
		if h.byKey[sub.key] == sub {
			delete(h.byKey, sub.key)
		}
		h.ending[subRef{slot, jsonrpc.IDKey(id)}]++
		h.mu.Unlock()
		h.unsubscribeAtBackend(sub.unsubMethod, slot, id)
		return
	}
	sub.state = subLive
	sub.slot = slot
	sub.backendID = id
	// Clients see the backend's id unless another subscription has it
	// (each backend, and each connection to one, numbers its own): then
	// a gateway id, mapped back to the backend's on the way.
	sub.clientID = id
	for h.byClientID[jsonrpc.IDKey(sub.clientID)] != nil {
		sub.clientID = newSubscriptionID()
	}
	h.byClientID[jsonrpc.IDKey(sub.clientID)] = sub
	h.byID[subRef{slot, jsonrpc.IDKey(id)}] = sub
	h.mu.Unlock()
}

// newSubscriptionID returns a subscription id of the gateway's own, as
// go-ethereum makes them: "0x" and 32 random hex digits.
func newSubscriptionID() json.RawMessage {
	var r [16]byte
	_, _ = rand.Read(r[:])
	return json.RawMessage(`"0x` + hex.EncodeToString(r[:]) + `"`)
}

// isScalarID reports whether a subscribe result can be a subscription id.
func isScalarID(v json.RawMessage) bool {
	return len(v) > 0 && (v[0] == '"' || v[0] == '-' || (v[0] >= '0' && v[0] <= '9'))
}

// removeLocked takes sub out of the hub and out of its owners. h.mu must be
// held.
func (h *hub) removeLocked(sub *subscription) {
	if h.byKey[sub.key] == sub {
		delete(h.byKey, sub.key)
	}
	if sub.clientID != nil && h.byClientID[jsonrpc.IDKey(sub.clientID)] == sub {
		delete(h.byClientID, jsonrpc.IDKey(sub.clientID))
	}
	if sub.backendID != nil {
		ref := subRef{sub.slot, jsonrpc.IDKey(sub.backendID)}
		if h.byID[ref] == sub {
			delete(h.byID, ref)
		}
	}
	for o := range sub.owners {
		o.budget.subs -= o.subs[sub]
		delete(o.subs, sub)
	}
	clear(sub.owners)
	sub.state = subDead
}

// drop releases one of c's references to sub; when it was the last
// reference of all consumers to a live subscription, the backend is told.
func (h *hub) drop(c *Consumer, sub *subscription) {
	h.mu.Lock()
	last := h.dropLocked(c, sub, 1)
	slot, id := sub.slot, sub.backendID
	h.mu.Unlock()
	if last {
		h.unsubscribeAtBackend(sub.unsubMethod, slot, id)
	}
}

// dropLocked releases n of c's references to sub and reports whether the
// subscription is now unowned and was live (so the backend must be told).
// An unowned subscription whose subscribe call is under way has that call
// cancelled; a reply that still comes is undone by activate.
func (h *hub) dropLocked(c *Consumer, sub *subscription, n int) bool {
	if sub.owners[c] -= n; sub.owners[c] <= 0 {
		delete(sub.owners, c)
	}
	if held, ok := c.subs[sub]; ok {
		c.budget.subs -= min(n, held)
		if c.subs[sub] -= n; c.subs[sub] <= 0 {
			delete(c.subs, sub)
		}
	}
	if len(sub.owners) > 0 {
		return false
	}
	switch sub.state {
	case subPending:
		if h.byKey[sub.key] == sub {
			delete(h.byKey, sub.key) // a newcomer starts afresh
		}
		sub.cancel()
	case subLive:
		h.ending[subRef{sub.slot, jsonrpc.IDKey(sub.backendID)}]++
		h.removeLocked(sub)
		return true
	case subResubscribing:
		h.removeLocked(sub) // the resubscriber sees it dead and undoes its call
	}
	return false
}

// unsubscribe ends one of c's own subscriptions: the one whose id (compared
// decoded, see jsonrpc.IDKey) the params name and that method undoes. A
// subscription c does not own is never touched, whoever owns it: the call
// fails without reaching the backend.
func (c *Consumer) unsubscribe(ctx context.Context, method string, params json.RawMessage, co CallOptions) (json.RawMessage, error) {
	h := c.h
	id, rewrite := unsubscribeTarget(params)
	if id == nil {
		return nil, newError(CodeInvalidArgument, method+` takes the subscription id as params: [id] or {"subscription": id}`, nil)
	}
	key := jsonrpc.IDKey(id)
	h.mu.Lock()
	var sub *subscription
	for s := range c.subs {
		if s.state != subDead && s.clientID != nil && s.unsubMethod == method && jsonrpc.IDKey(s.clientID) == key {
			sub = s
		}
	}
	if sub == nil {
		h.mu.Unlock()
		return nil, newError(CodeInvalidArgument, fmt.Sprintf("no subscription %s made by this client for %s to end", excerpt(id), method), nil)
	}
	last := h.dropLocked(c, sub, 1)
	slot, backendID := sub.slot, sub.backendID
	h.mu.Unlock()
	if !last {
		return json.RawMessage("true"), nil // others still share it
	}
	defer h.ended(slot, backendID)
	return h.link.request(ctx, &request{method: method, params: rewrite(backendID), slot: slot}, co)
}

// ended forgets a subscription being unsubscribed once the backend has
// answered the unsubscribe (see hub.ending).
func (h *hub) ended(slot int, id json.RawMessage) {
	ref := subRef{slot, jsonrpc.IDKey(id)}
	h.mu.Lock()
	if h.ending[ref]--; h.ending[ref] <= 0 {
		delete(h.ending, ref)
	}
	h.mu.Unlock()
}

// unsubscribeTarget finds the subscription id in unsubscribe params ([id]
// or {"subscription": id}) and returns a function that puts another id in
// its place.
func unsubscribeTarget(params json.RawMessage) (json.RawMessage, func(json.RawMessage) json.RawMessage) {
	var arr []json.RawMessage
	if json.Unmarshal(params, &arr) == nil && len(arr) > 0 && isScalarID(arr[0]) {
		return arr[0], func(id json.RawMessage) json.RawMessage {
			arr[0] = id
			b, _ := json.Marshal(arr)
			return b
		}
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(params, &obj) == nil && isScalarID(obj["subscription"]) {
		return obj["subscription"], func(id json.RawMessage) json.RawMessage {
			obj["subscription"] = id
			b, _ := json.Marshal(obj)
			return b
		}
	}
	return nil, nil
}

// Close releases the consumer's subscriptions (unsubscribing at the backend
// those no one else shares) and stops its deliveries: once Close returns,
// deliver is not running and is never called again.
func (c *Consumer) Close() {
	c.dmu.Lock()
	c.dclosed = true
	c.dmu.Unlock()
	h := c.h
	h.mu.Lock()
	if c.closed {
		h.mu.Unlock()
		return
	}
	c.closed = true
	delete(h.consumers, c)
	c.budget.listens -= len(c.methods)
	clear(c.methods)
	clear(c.holding)
	type undo struct {
		method string
		slot   int
		id     json.RawMessage
	}
	var undos []undo
	for sub, n := range c.subs {
		if h.dropLocked(c, sub, n) {
			undos = append(undos, undo{sub.unsubMethod, sub.slot, sub.backendID})
		}
	}
	h.mu.Unlock()
	for _, u := range undos {
		h.unsubscribeAtBackend(u.method, u.slot, u.id)
	}
}

// unsubscribeAtBackend undoes a subscription nobody owns any more, in the
// background.
func (h *hub) unsubscribeAtBackend(method string, slot int, id json.RawMessage) {
	params := append(append([]byte{'['}, id...), ']')
	h.link.background(func(ctx context.Context) {
		defer h.ended(slot, id)
		_, err := h.link.request(ctx, &request{method: method, params: params, slot: slot}, CallOptions{})
		if err != nil && CodeOf(err) != CodeDraining {
			h.opts.Logger.Warn("unsubscribe at the backend failed", "method", method, "err", err)
		}
	})
}

// route delivers one backend notification (see hub).
func (h *hub) route(slot int, method string, params json.RawMessage) {
	if id := jsonrpc.SubscriptionID(params); id != nil {
		h.mu.Lock()
		sub := h.byID[subRef{slot, jsonrpc.IDKey(id)}]
		if sub != nil {
			if !bytes.Equal(sub.clientID, id) {
				params = jsonrpc.WithSubscriptionID(params, sub.clientID)
			}
			owners := make([]*Consumer, 0, len(sub.owners))
			for c := range sub.owners {
				if held, ok := c.holding[sub]; ok {
					if len(held) < maxHeld {
						c.holding[sub] = append(held, heldNote{method, params})
					} else {
						h.dropped.Add(1)
					}
					continue
				}
				owners = append(owners, c)
			}
			h.mu.Unlock()
			h.deliver(owners, method, params)
			return
		}
		ending := h.ending[subRef{slot, jsonrpc.IDKey(id)}] > 0
		h.mu.Unlock()
		if ending {
			return // its subscription is being ended: it is no one's
		}
	}
	if slot != h.listenSlot() || !h.link.MethodAllowed(method) {
		return // a listener sees only notifications of methods clients may call
	}
	h.mu.Lock()
	var targets []*Consumer
	for c := range h.consumers {
		if c.methods[method] || c.methods["*"] {
			targets = append(targets, c)
		}
	}
	h.mu.Unlock()
	h.deliver(targets, method, params)
}

func ownersOf(sub *subscription) []*Consumer {
	owners := make([]*Consumer, 0, len(sub.owners))
	for c := range sub.owners {
		owners = append(owners, c)
	}
	return owners
}

// deliver sends a notification to each consumer that is still open. It
// runs without h.mu: each delivery takes its consumer's dmu.
func (h *hub) deliver(to []*Consumer, method string, params json.RawMessage) {
	n := 0
	for _, c := range to {
		if c.send(method, params) {
			n++
		}
	}
	h.delivered.Add(uint64(n))
}

func gatewayParams(fields map[string]any) json.RawMessage {
	b, _ := json.Marshal(fields)
	return b
}

// wantsConn reports whether anyone waits for notifications over slot: a
// listener (the listen slot carries method notifications) or a
// subscription being re-issued. A lazy slot keeps redialling while this
// holds.
func (h *hub) wantsConn(slot int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if slot == h.listen && h.listenersLocked() {
		return true
	}
	for _, sub := range h.byKey {
		if sub.slot == slot && sub.state == subResubscribing {
			return true
		}
	}
	return false
}

// connLost runs when a slot's connection is gone and its reader has exited.
// Without Resubscribe, every subscription on it ends with
// NotifySubscriptionLost (and, for the listen slot, every listened
// method). With it, the owners of its subscriptions and the listeners
// are told at once that notifications stop for a while and may be missed
// (NotifyGap: nobody is left waiting in silence while the backend is
// down), the subscriptions are re-issued in the background, and listeners
// keep listening (the slot redials for them, see wantsConn). Listening
// moves to another available backend, if any, once the listeners have
// their gap: no notification from there reaches them before it.
func (h *hub) connLost(slot int, cause error) {
	reason := "backend connection lost"
	if cause != nil {
		reason += ": " + cause.Error()
	}
	type tell struct {
		owners []*Consumer
		method string
		params json.RawMessage
	}
	var tells []tell
	var again []*subscription
	h.mu.Lock()
	for ref := range h.ending {
		if ref.slot == slot {
			delete(h.ending, ref) // the connection that knew those ids is gone
		}
	}
	for ref, sub := range h.byID {
		if ref.slot != slot {
			continue
		}
		delete(h.byID, ref)
		if h.opts.Resubscribe && len(sub.owners) > 0 {
			sub.state = subResubscribing
			again = append(again, sub)
			tells = append(tells, tell{ownersOf(sub), NotifyGap, gatewayParams(map[string]any{"subscription": sub.clientID, "reason": reason})})
			continue
		}
		tells = append(tells, tell{ownersOf(sub), NotifySubscriptionLost, gatewayParams(map[string]any{"subscription": sub.clientID, "reason": reason})})
		h.removeLocked(sub)
	}
	moveTo := -1
	if slot == h.listen {
		for c := range h.consumers {
			ms := listening(c)
			if len(ms) == 0 {
				continue
			}
			if h.opts.Resubscribe {
				tells = append(tells, tell{[]*Consumer{c}, NotifyGap, gatewayParams(map[string]any{"methods": ms, "reason": reason})})
				continue
			}
			c.budget.listens -= len(c.methods)
			clear(c.methods)
			tells = append(tells, tell{[]*Consumer{c}, NotifySubscriptionLost, gatewayParams(map[string]any{"methods": ms, "reason": reason})})
		}
		if to, ok := h.link.moveFrom(slot); ok {
			moveTo = to
		}
	}
	h.mu.Unlock()
	for _, t := range tells {
		h.deliver(t.owners, t.method, t.params)
	}
	if moveTo >= 0 {
		// Later listeners, and these with Resubscribe, hear the other
		// backend from now on.
		h.mu.Lock()
		if h.listen == slot {
			h.listen = moveTo
		}
		h.mu.Unlock()
		h.link.dial(moveTo)
	}
	for _, sub := range again {
		h.link.background(func(ctx context.Context) { h.resubscribe(ctx, sub) })
	}
}

// resubscribe re-issues sub on its slot's next connection, waiting through
// redials, until it succeeds, its owners leave, or the Bridge closes.
func (h *hub) resubscribe(ctx context.Context, sub *subscription) {
	for {
		h.mu.Lock()
		alive := sub.state == subResubscribing
		slot := sub.slot
		h.mu.Unlock()
		if !alive || ctx.Err() != nil {
			return
		}
		// It stays on its backend, unless that one is not available and
		// another is: then it moves.
		if !h.link.usable(slot) {
			if to, ok := h.link.moveFrom(slot); ok {
				slot = to
			}
		}
		// With one backend it waits through the redials. With several it
		// does not wait on this one (it may never come back): when it is
		// not ready, the loop waits for a change and looks again.
		several := h.link.several()
		_, err := h.link.request(ctx, &request{method: sub.method, params: sub.params, slot: slot,
			onResult: func(slot int, id json.RawMessage) { h.reactivate(sub, slot, id) }}, CallOptions{WaitForReady: !several})
		h.mu.Lock()
		state := sub.state
		h.mu.Unlock()
		if err == nil || state != subResubscribing {
			return
		}
		code := CodeOf(err)
		if code == CodeBackendError || code == CodeMalformedReply || code == CodeDraining || ctx.Err() != nil {
			h.mu.Lock()
			owners := ownersOf(sub)
			h.removeLocked(sub)
			h.mu.Unlock()
			h.deliver(owners, NotifySubscriptionLost, gatewayParams(map[string]any{
				"subscription": sub.clientID, "reason": "re-subscribing failed: " + err.Error()}))
			return
		}
		// Unavailable, lost again, or timed out: try again.
		if several && code == CodeUnavailable && !h.link.awaitNextChange(ctx) {
			return
		}
	}
}

// reactivate routes sub by its new backend id, before the reader handles
// the next message (its owners were told of the gap at the loss).
func (h *hub) reactivate(sub *subscription, slot int, id json.RawMessage) {
	if !isScalarID(id) {
		return
	}
	h.mu.Lock()
	if sub.state != subResubscribing {
		h.ending[subRef{slot, jsonrpc.IDKey(id)}]++
		h.mu.Unlock()
		h.unsubscribeAtBackend(sub.unsubMethod, slot, id) // its owners left meanwhile
		return
	}
	sub.state = subLive
	sub.slot = slot
	sub.backendID = id
	h.byID[subRef{slot, jsonrpc.IDKey(id)}] = sub
	h.mu.Unlock()
	h.resubscribes.Add(1)
}

// listenersLocked reports whether any consumer listens to methods. h.mu
// must be held.
func (h *hub) listenersLocked() bool {
	for c := range h.consumers {
		if len(c.methods) > 0 {
			return true
		}
	}
	return false
}

// listenSlot returns the slot whose method notifications reach listeners.
func (h *hub) listenSlot() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listen
}

// usesSlot reports whether a subscription or a listener needs slot's
// connection (so it is not closed for being idle).
func (h *hub) usesSlot(slot int) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if slot == h.listen && h.listenersLocked() {
		return true
	}
	for ref := range h.byID {
		if ref.slot == slot {
			return true
		}
	}
	for _, sub := range h.byKey {
		if sub.slot == slot && sub.state == subResubscribing {
			return true
		}
	}
	return false
}

// hubStats are the hub's figures for Stats.
func (h *hub) stats() (subscriptions, owners, consumers int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, sub := range h.byKey {
		for _, n := range sub.owners {
			owners += int64(n)
		}
	}
	return int64(len(h.byID)), owners, int64(len(h.consumers))
}

// IsSubscribeMethod reports whether method makes a subscription (one of
// Options.SubscribeMethods matches it).
func (b *Bridge) IsSubscribeMethod(method string) bool {
	_, sub := b.hub.unsubscribeFor(method)
	return sub
}

// isSubscriptionMethod reports whether method creates or ends a
// subscription.
func (h *hub) isSubscriptionMethod(method string) bool {
	_, sub := h.unsubscribeFor(method)
	return sub || h.isUnsubscribe(method)
}

// IsSubscriptionMethod reports whether method creates or ends a
// subscription (see Options.SubscribeMethods). Such methods are served
// only through a Consumer: Bridge.Call, Bridge.Go and Bridge.Notify refuse
// them with CodeUnsupported, since the gateway could neither route a
// subscription made that way nor tell whose subscription an unsubscribe
// ends.
func (b *Bridge) IsSubscriptionMethod(method string) bool {
	return b.hub.isSubscriptionMethod(method)
}
