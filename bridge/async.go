package bridge

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/wsbridge/wsbridge/jsonrpc"
)

// Go starts a call and returns at once, without a goroutine of its own: it
// is registered and queued on an open connection, and done receives the
// outcome exactly once (see the package doc's Callbacks for which
// goroutine runs it). done must not block. cancel gives up on the call:
// done then gets CodeCanceled unless the outcome came first. A call that
// cannot start on an open connection at once (the Bridge is dialling) runs
// on a goroutine of the Bridge instead.
//
// Go suits faces that keep many calls in flight per client (/ws): a
// pending call then costs a few hundred bytes, not a goroutine stack.
func (b *Bridge) Go(method string, params json.RawMessage, co CallOptions, done func(json.RawMessage, error)) (cancel func()) {
	if err := b.plainMethod(method); err != nil {
		done(nil, err)
		return func() {}
	}
	if p := b.policies.of(method); !p.plain() || b.tracer != nil {
		// With tracing on, the call is traced the synchronous way too.
		// Retries, hedges, deduplication and the cache run the
		// synchronous way, on a goroutine of the Bridge.
		return b.goCall(func(ctx context.Context) (json.RawMessage, error) {
			return b.policies.call(ctx, method, params, co, p)
		}, done)
	}
	quoted, err := b.begin(method, params)
	if err != nil {
		done(nil, err)
		return func() {}
	}
	now := time.Now()
	a := &asyncCall{b: b, quoted: quoted, params: params, co: co, start: now, deadline: now.Add(b.timeout(co)), done: done}
	a.startOn()
	return a.cancel
}

// asyncCall is one call made with Go.
type asyncCall struct {
	// Static after Go.
	b        *Bridge
	quoted   []byte
	params   json.RawMessage
	co       CallOptions
	start    time.Time
	deadline time.Time
	done     func(json.RawMessage, error)

	mu sync.Mutex
	// Guarded by mu.
	cancelled bool
	op        *op                // the op registered on conn, if any
	conn      *conn              //
	stop      context.CancelFunc // cancels the fallback goroutine, if any
}

// startOn registers and queues the call on an open connection, or falls
// back to a goroutine.
func (a *asyncCall) startOn() {
	b := a.b
	c := b.pickSlot(-1, nil).openConn()
	if c == nil {
		a.fallback()
		return
	}
	id := b.nextID.Add(1)
	if a.co.OnBackend != nil {
		a.co.OnBackend(c.slot.be.displayURL)
	}
	o := newAsyncOp(id, jsonrpc.AppendRequest(make([]byte, 0, jsonrpc.RequestSize(a.quoted, a.params)), id, true, a.quoted, a.params), a.settle)
	// The timer exists before o can complete (complete stops it).
	o.timer = time.AfterFunc(time.Until(a.deadline), func() { a.expire(o, c, CodeDeadlineExceeded) })
	a.mu.Lock()
	if a.cancelled {
		a.mu.Unlock()
		o.timer.Stop()
		a.finish(nil, newError(CodeCanceled, "call cancelled by the caller", nil))
		return
	}
	if !c.pending.add(o) {
		a.mu.Unlock()
		o.timer.Stop()
		a.fallback()
		return
	}
	a.op, a.conn = o, c
	a.mu.Unlock()
	c.send(o)
}

// expire gives up on o: for its deadline, or because the caller cancelled.
func (a *asyncCall) expire(o *op, c *conn, code Code) {
	if !c.pending.abandon(o) {
		return // its outcome is being delivered
	}
	if o.state.Load() == opWritten {
		c.sendCancel(o.id)
	}
	err := newError(CodeCanceled, "call cancelled by the caller", nil)
	if code == CodeDeadlineExceeded {
		a.b.counters.timeouts.Add(1)
		err = newError(CodeDeadlineExceeded, "deadline exceeded waiting for the backend", context.DeadlineExceeded)
	}
	o.complete(result{err: err})
}

func (a *asyncCall) cancel() {
	a.mu.Lock()
	a.cancelled = true
	o, c, stop := a.op, a.conn, a.stop
	a.mu.Unlock()
	if stop != nil {
		stop()
	}
	if o != nil {
		a.expire(o, c, CodeCanceled)
	}
}

// settle takes an op's outcome. A request that never left (its connection
// broke first) is tried again on the next connection.
func (a *asyncCall) settle(r result) {
	if errors.Is(r.err, errNotSent) {
		a.fallback()
		return
	}
	a.finish(r.value, r.err)
}

// fallback runs the call the synchronous way, on a goroutine of the
// Bridge, until the call's deadline.
func (a *asyncCall) fallback() {
	b := a.b
	ctx, stop := context.WithDeadline(b.bgCtx, a.deadline)
	a.mu.Lock()
	if a.cancelled {
		a.mu.Unlock()
		stop()
		a.finish(nil, newError(CodeCanceled, "call cancelled by the caller", nil))
		return
	}
	a.op, a.conn, a.stop = nil, nil, stop
	a.mu.Unlock()
	started := b.goBackground(func(context.Context) {
		defer stop()
		res, err := b.attempt(ctx, a.quoted, a.params, a.co, callSpec{slot: -1})
		a.finish(res, err)
	})
	if !started {
		stop()
		a.finish(nil, newError(CodeDraining, "gateway is shutting down", nil))
	}
}

func (a *asyncCall) finish(res json.RawMessage, err error) {
	a.b.recordLatency(time.Since(a.start), err)
	a.b.done()
	a.done(res, err)
}

// goCall runs call on a goroutine of the Bridge and hands its outcome to
// done; cancel ends call's context.
func (b *Bridge) goCall(call func(context.Context) (json.RawMessage, error), done func(json.RawMessage, error)) (cancel func()) {
	ctx, stop := context.WithCancel(b.bgCtx)
	started := b.goBackground(func(context.Context) {
		defer stop()
		done(call(ctx))
	})
	if !started {
		stop()
		done(nil, newError(CodeDraining, "gateway is shutting down", nil))
	}
	return stop
}
