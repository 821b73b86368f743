package bridge

import (
	"context"
	"encoding/json"
	"log/slog"
)

// hubLink is what the hub needs of the Bridge, and all it may use: the
// Bridge's calls for a Consumer's plain methods, requests of its own
// (subscribe, unsubscribe: no method policy, pinned to a slot or routed),
// background work, and what it must know of the backends to place
// listeners and subscriptions.
type hubLink interface {
	// Call, Go and Notify are the Bridge's, with the method's policy.
	Call(ctx context.Context, method string, params json.RawMessage, co CallOptions) (json.RawMessage, error)
	Go(method string, params json.RawMessage, co CallOptions, done func(json.RawMessage, error)) (cancel func())
	Notify(ctx context.Context, method string, params json.RawMessage, co CallOptions) error
	MethodAllowed(method string) bool

	// request makes one of the hub's own requests (see
	// Bridge.internalCall).
	request(ctx context.Context, r *request, co CallOptions) (json.RawMessage, error)
	// background runs f on a goroutine that Close cancels and waits for;
	// false once the Bridge is closed. bgContext is f's context.
	background(f func(ctx context.Context)) bool
	bgContext() context.Context
	// awaitNextChange waits for a change of any backend's state (see
	// Bridge.awaitChange).
	awaitNextChange(ctx context.Context) bool
	// ctxError is the error of a wait given up with ctx; countTimeout
	// counts a call that ended at its deadline.
	ctxError(ctx context.Context) error
	countTimeout()

	// dial asks a lazy slot to dial; connected reports whether it is.
	dial(slot int)
	connected(slot int) bool
	// several reports whether there is more than one backend.
	several() bool
	// usable reports whether slot's backend takes requests (see router).
	usable(slot int) bool
	// moveFrom returns a slot of another usable backend than slot's, when
	// there is one.
	moveFrom(slot int) (int, bool)
}

// hubOptions are the Options the hub follows.
type hubOptions struct {
	SubscribeMethods, UnsubscribeMethods               []string
	MaxSubscriptionsPerConsumer, MaxListensPerConsumer int
	Resubscribe                                        bool
	Logger                                             *slog.Logger
}

func (b *Bridge) request(ctx context.Context, r *request, co CallOptions) (json.RawMessage, error) {
	return b.internalCall(ctx, r, co)
}

func (b *Bridge) background(f func(ctx context.Context)) bool { return b.goBackground(f) }
func (b *Bridge) bgContext() context.Context                  { return b.bgCtx }
func (b *Bridge) ctxError(ctx context.Context) error          { return b.abortError(b.ctxCode(ctx)) }
func (b *Bridge) countTimeout()                               { b.counters.timeouts.Add(1) }
func (b *Bridge) dial(slot int)                               { b.slot(slot).kickDial() }
func (b *Bridge) connected(slot int) bool                     { return b.slot(slot).currentState() == StateConnected }
func (b *Bridge) several() bool                               { return len(b.backends().active) > 1 }
func (b *Bridge) usable(slot int) bool                        { return b.slot(slot).be.usable() }

// moveFrom returns a slot of another usable backend. From a retired
// backend it always finds one (a backend of the set, usable or not: a
// reference to a closed slot would never be served again).
func (b *Bridge) moveFrom(slot int) (int, bool) {
	from := b.slot(slot).be
	active := b.backends().active
	if len(active) == 1 && !from.retired.Load() {
		return 0, false
	}
	be := b.router.pick(from)
	if be == nil && from.retired.Load() {
		be = lowestPriority(active)[0]
	}
	if be == nil || be == from {
		return 0, false
	}
	return be.slots[0].idx, true
}
