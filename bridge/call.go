package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// The call pipeline. Every call, whoever makes it (Call, Go, Notify, a
// subscription's subscribe or unsubscribe, a health call), passes the same
// stages:
//
//  1. admission (begin): the in-flight limit, draining, the method rules,
//     the size limit. A refused call never reaches the backend.
//  2. a call (this file): its one deadline timer, its cancellation, its
//     span, and the one place its outcome is counted (latency, timeouts,
//     in flight). A call ends exactly once.
//  3. the method's steps (policy.go), each an invoker wrapping the next:
//     cache, then dedup, then hedge, then retry; only those the method's
//     policy asks for are in its chain.
//  4. the attempt (attempt.go): the router picks a backend (router.go),
//     a connection is found or awaited, and the request is registered in
//     the connection's pending table before its frame is written.
//
// Stages 3 and 4 are asynchronous: an invoker starts a request and returns
// at once; its outcome comes later, to a sink, exactly once. Call is Go
// plus a wait.

// request is one backend request as the pipeline carries it. Steps that
// send it more than once (retry, hedge) send copies.
type request struct {
	method string
	quoted []byte // method as a JSON string; set by begin
	params json.RawMessage
	notify bool
	// slot pins the request to one connection slot; -1 lets the router
	// pick (and move a request that could not be written).
	slot int
	// avoid is a backend the router passes over while another is usable
	// (a retry goes elsewhere).
	avoid *backend
	// waitForReady waits through a backend's backoff instead of failing
	// fast (CallOptions.WaitForReady).
	waitForReady bool
	// onResult runs on the connection's reader when a successful reply
	// arrives, before the reader handles the next message (also for a reply
	// that comes after the caller gave up). Subscriptions use it to route
	// the notifications that may follow the reply at once.
	onResult resultHook
	// onBackend is CallOptions.OnBackend.
	onBackend func(url string)
	// span is the call's span; nil without tracing.
	span trace.Span
}

type resultHook func(slot int, result json.RawMessage)

// outcome is how a request ended.
type outcome struct {
	value json.RawMessage
	err   error
	// be is the backend the request was last written to, if any.
	be *backend
}

// sink receives a request's outcome, exactly once.
type sink interface{ settle(outcome) }

// abortable gives up on a request under way: its sink then gets an error
// of the code given (or a truer one: the reply was lost at shutdown), or
// the outcome that came first. It may be called more than once, and after
// the outcome.
type abortable interface{ abort(Code) }

// invoker starts a request and returns at once. The outcome goes to to,
// exactly once, possibly before invoker returns.
type invoker func(r *request, to sink) abortable

// step is a stage of a method's chain: it wraps the next invoker.
type step func(next invoker) invoker

// call is one call from admission to its outcome: it owns the call's
// deadline and cancellation, and counts the outcome once.
type call struct {
	// Static after startCall.
	b     *Bridge
	start time.Time
	req   request
	done  func(json.RawMessage, error)

	ended atomic.Bool // the outcome was handed on

	mu sync.Mutex
	// Guarded by mu.
	inner abortable   // the pipeline's; nil until it returned
	timer *time.Timer // the deadline; armed once the request is under way
}

// startCall runs c.req (admitted by begin) through inv, ending by
// deadline at the latest; c.done gets the outcome exactly once, possibly
// before startCall returns. c.abort gives up on the call with a code
// (CodeCanceled, CodeDeadlineExceeded, CodeDraining), c.cancel as the
// caller.
func (b *Bridge) startCall(c *call, inv invoker, deadline time.Time) {
	c.b = b
	c.start = time.Now()
	inner := inv(&c.req, c)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended.Load() {
		return
	}
	c.inner = inner
	// The deadline is armed only now, when the request is registered (or
	// waiting for a connection): a timer that fired earlier would find
	// nothing to end.
	c.timer = time.AfterFunc(time.Until(deadline), c.expire)
}

func (c *call) expire() { c.abort(CodeDeadlineExceeded) }

func (c *call) cancel() { c.abort(CodeCanceled) }

func (c *call) abort(code Code) {
	c.mu.Lock()
	inner := c.inner
	c.mu.Unlock()
	if inner != nil && !c.ended.Load() {
		inner.abort(code)
	}
}

// settle is the call's outcome (sink): counted here, once.
func (c *call) settle(o outcome) {
	if !c.ended.CompareAndSwap(false, true) {
		return
	}
	c.mu.Lock()
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
	b := c.b
	if CodeOf(o.err) == CodeDeadlineExceeded {
		b.counters.timeouts.Add(1)
	}
	if !c.req.notify {
		b.recordLatency(time.Since(c.start), o.err)
	}
	endSpan(c.req.span, o.err)
	b.done()
	c.done(o.value, o.err)
}

// abortError is the error of a request given up with code.
func (b *Bridge) abortError(code Code) *Error {
	switch code {
	case CodeDeadlineExceeded:
		return newError(CodeDeadlineExceeded, "deadline exceeded waiting for the backend", context.DeadlineExceeded)
	case CodeDraining:
		return newError(CodeDraining, "gateway is shutting down", nil)
	}
	return newError(CodeCanceled, "call cancelled by the caller", context.Canceled)
}

// deadlineSlack is how close to its deadline a cancellation counts as a
// timeout: a gRPC client cancels the stream when its deadline passes, and
// that can reach the server a little before the server's own timer fires.
const deadlineSlack = 20 * time.Millisecond

// ctxCode is the code of a call whose context ended.
func (b *Bridge) ctxCode(ctx context.Context) Code {
	dl, hasDeadline := ctx.Deadline()
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || (hasDeadline && time.Until(dl) < deadlineSlack):
		return CodeDeadlineExceeded
	case b.closing.Load():
		return CodeDraining
	}
	return CodeCanceled
}

// wait runs a call made with startCall to its end, giving up with ctx.
func (b *Bridge) wait(ctx context.Context, c *call, inv invoker, deadline time.Time) (json.RawMessage, error) {
	out := make(chan outcome, 1)
	c.done = func(res json.RawMessage, err error) { out <- outcome{value: res, err: err} }
	b.startCall(c, inv, deadline)
	var o outcome
	select {
	case o = <-out:
	case <-ctx.Done():
		c.abort(b.ctxCode(ctx))
		o = <-out
	}
	return o.value, o.err
}

// deadlineOf is the deadline of a call made now with ctx and co.
func (b *Bridge) deadlineOf(ctx context.Context, co CallOptions) time.Time {
	deadline := time.Now().Add(b.timeout(co))
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		return dl
	}
	return deadline
}

// newCall admits a call (begin) and prepares it: its request, and its
// span when tracing is on (the parent is ctx's span, or co.TraceParent).
// The caller must start it (startCall), which ends its admission.
func (b *Bridge) newCall(ctx context.Context, r request, co CallOptions) (*call, error) {
	quoted, err := b.begin(r.method, r.params)
	if err != nil {
		return nil, err
	}
	c := &call{req: r}
	c.req.quoted = quoted
	if b.tracer != nil {
		_, c.req.span = b.startSpan(ctx, r.method, co)
	}
	return c, nil
}

// internalCall makes one of the package's own requests (subscriptions,
// health calls) through admission and the attempt, with no method policy:
// r.method and r.params are sent as they are, r.slot and r.onResult as
// set, within co's timeout.
func (b *Bridge) internalCall(ctx context.Context, r *request, co CallOptions) (json.RawMessage, error) {
	if ctx.Err() != nil {
		return nil, b.abortError(b.ctxCode(ctx)) // not even a dial for a caller already gone
	}
	r.waitForReady = co.WaitForReady
	c, err := b.newCall(ctx, *r, co)
	if err != nil {
		return nil, err
	}
	return b.wait(ctx, c, b.attempt, b.deadlineOf(ctx, co))
}
