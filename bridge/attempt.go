package bridge

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsbridge/wsbridge/jsonrpc"
)

// attempt is the last stage of the pipeline (see call.go): it sends one
// request on a connection and hands its outcome on. The router picks the
// backend; on an open connection the request is registered in the pending
// table and its frame written at once, by the caller's goroutine. When
// the slot has no open connection, a goroutine of the Bridge waits for
// one (a dial under way, or wait-for-ready through a backoff), moving to
// another backend while this one refuses, and then starts the request the
// same way. A request that could not be written (its connection broke
// first) starts again, with a new id, on another connection.
type attempt struct {
	// Static after send.
	b  *Bridge
	r  *request
	to sink

	mu sync.Mutex
	// Guarded by mu.
	aborted Code               // set by abort: no start from now on
	avoid   *backend           // the backend the router passes over (a connection broke under the request there)
	op      *op                // the request registered on conn, if any
	conn    *conn              //
	stop    context.CancelFunc // ends the goroutine waiting for a connection, if any

	ended atomic.Bool // the outcome was handed on
}

// send is the base invoker: it starts r on a connection.
func (b *Bridge) send(r *request, to sink) abortable {
	a := &attempt{b: b, r: r, to: to}
	a.start(nil)
	return a
}

// start routes the request (avoiding the backend of a connection that has
// just broken under it, when another is usable) and starts it.
func (a *attempt) start(avoid *backend) {
	b := a.b
	var s *slot
	if a.r.slot >= 0 {
		s = b.slot(a.r.slot)
	} else {
		if avoid == nil {
			avoid = a.r.avoid
		}
		a.mu.Lock()
		a.avoid = avoid
		a.mu.Unlock()
		if be := b.router.pick(avoid); be != nil {
			s = be.pickSlot()
		}
	}
	if s != nil {
		if c := s.openConn(); c != nil {
			a.startOn(c)
			return
		}
	}
	a.wait(s)
}

// wait finds a connection on a goroutine of the Bridge, then starts the
// request on it.
func (a *attempt) wait(s *slot) {
	b := a.b
	ctx, stop := context.WithCancel(b.bgCtx)
	a.mu.Lock()
	if code := a.aborted; code != 0 {
		a.mu.Unlock()
		stop()
		a.finish(outcome{err: b.abortError(code)})
		return
	}
	a.stop = stop
	a.mu.Unlock()
	started := b.goBackground(func(context.Context) {
		defer stop()
		c, err := a.waitConn(ctx, s)
		if err != nil {
			a.finish(outcome{err: err})
			return
		}
		a.startOn(c)
	})
	if !started {
		stop()
		a.finish(outcome{err: b.abortError(CodeDraining)})
	}
}

// waitConn returns a connection for the request, starting from slot s
// (nil: no backend was usable). A request pinned to a slot, or with one
// backend, waits on that slot (for its dial; through its backoff with
// wait-for-ready). Among several backends a request waits for no
// backend's dial in particular: it looks again at every change of any
// backend's state and goes to the first usable one with an open
// connection (the router prefers those), so that a slow dial holds it
// only while no other backend can take it. It fails fast when no backend
// is usable and none is dialling, unless it waits for ready.
func (a *attempt) waitConn(ctx context.Context, s *slot) (*conn, error) {
	b, r := a.b, a.r
	for {
		if active := b.backends().active; r.slot >= 0 || len(active) == 1 {
			if s == nil || r.slot < 0 && s.be.retired.Load() {
				s = active[0].pickSlot()
			}
			a.traceDial(s)
			c, err := s.conn(ctx, r.waitForReady)
			if err != nil && ctx.Err() != nil {
				return nil, a.ctxErr()
			}
			if r.slot < 0 && errors.Is(err, errRetired) {
				s = nil // a reload removed the backend: to the new set
				continue
			}
			return c, err
		}
		changes := b.changes() // before looking: no change is missed
		if s != nil && s.be.retired.Load() {
			s = a.pick() // a reload removed the backend
		}
		if s != nil {
			if c := s.openConn(); c != nil {
				return c, nil
			}
			a.traceDial(s)
			s.kickDial()
		} else if !r.waitForReady && !b.dialling() {
			return nil, b.noBackend()
		}
		if !b.awaitChange(ctx, changes) {
			return nil, a.ctxErr()
		}
		s = a.pick()
	}
}

// pick routes the request again: a slot of the backend the router picks,
// or nil when none is usable.
func (a *attempt) pick() *slot {
	a.mu.Lock()
	avoid := a.avoid
	a.mu.Unlock()
	if be := a.b.router.pick(avoid); be != nil {
		return be.pickSlot()
	}
	return nil
}

// traceDial notes on the call's span that it waits for a dial of s.
func (a *attempt) traceDial(s *slot) {
	if a.r.span != nil && s.currentState() != StateConnected {
		a.r.span.AddEvent("backend.dial", trace.WithAttributes(attribute.String("server.address", s.be.displayURL)))
	}
}

// noBackend is the error of a request that found no usable backend.
func (b *Bridge) noBackend() *Error {
	var cause error
	var at int64
	for _, s := range b.backends().slots {
		if snap := s.snapshot(); snap.lastErr != nil && snap.lastErrAt.UnixNano() > at {
			cause, at = snap.lastErr, snap.lastErrAt.UnixNano()
		}
	}
	return newError(CodeUnavailable, "no backend available (each is backing off after a failure, its circuit breaker is open, or its health call fails)", cause)
}

// ctxErr is the error of a wait for a connection that was given up.
func (a *attempt) ctxErr() error {
	a.mu.Lock()
	code := a.aborted
	a.mu.Unlock()
	if code == 0 {
		code = CodeDraining // the Bridge is closing
	}
	return a.b.abortError(code)
}

// startOn registers the request on c (before its frame is written, so
// that no reply can come first) and writes it, or queues it for c's
// writer.
func (a *attempt) startOn(c *conn) {
	b := a.b
	r := a.r
	id := b.nextID.Add(1)
	params := r.params
	if r.span != nil && b.opts.TraceParam != "" && !r.notify {
		params = withTraceParam(trace.ContextWithSpan(context.Background(), r.span), b.opts.TraceParam, params)
	}
	o := &op{id: id, notify: r.notify, owner: a, onResult: r.onResult,
		frame: jsonrpc.AppendRequest(make([]byte, 0, jsonrpc.RequestSize(r.quoted, params)), id, !r.notify, r.quoted, params)}
	a.mu.Lock()
	if code := a.aborted; code != 0 {
		a.mu.Unlock()
		a.finish(outcome{err: b.abortError(code)})
		return
	}
	if !c.pending.add(o) {
		a.mu.Unlock()
		a.start(c.slot.be) // the connection is being torn down: nothing was sent
		return
	}
	a.op, a.conn = o, c
	a.mu.Unlock()
	if r.span != nil {
		r.span.SetAttributes(attribute.Int64("rpc.jsonrpc.request_id", int64(id)), attribute.String("server.address", c.slot.be.displayURL))
	}
	if r.onBackend != nil {
		r.onBackend(c.slot.be.displayURL)
	}
	c.send(o)
}

// opEnded takes the op's outcome. A request that never left (its
// connection broke first) starts again, on another connection.
func (a *attempt) opEnded(res result) {
	a.mu.Lock()
	c, sent := a.conn, a.op
	a.op, a.conn = nil, nil
	aborted := a.aborted
	a.mu.Unlock()
	if errors.Is(res.err, errNotSent) {
		if aborted == 0 {
			a.start(c.slot.be)
			return
		}
		res.err = a.b.abortError(aborted)
	}
	o := outcome{value: res.value, err: res.err}
	if c != nil {
		o.be = c.slot.be
		if answered(o.err) || CodeOf(o.err) == CodeReplyLost && !a.b.closing.Load() {
			o.be.requestEnded(sent, o.err)
		}
	}
	a.finish(o)
}

func (a *attempt) finish(o outcome) {
	if a.ended.CompareAndSwap(false, true) {
		a.to.settle(o)
	}
}

// abort gives up on the request: a wait for a connection ends, and a
// registered request is taken out of the pending table (its late reply is
// then counted as late) and, when it was written, cancelled at the
// backend (Options.CancelMethod).
func (a *attempt) abort(code Code) {
	a.mu.Lock()
	if a.ended.Load() || a.aborted != 0 {
		a.mu.Unlock()
		return
	}
	a.aborted = code
	o, c, stop := a.op, a.conn, a.stop
	a.mu.Unlock()
	if stop != nil {
		stop()
	}
	if o == nil || !c.pending.abandon(o) {
		return // not registered, or its outcome is being delivered
	}
	written := o.state.Load() == opWritten
	err := a.b.abortError(code)
	switch {
	case written && o.notify:
	case written && a.b.closing.Load():
		err = errShutDownWritten()
	case written:
		c.sendCancel(o.id)
		if code == CodeDeadlineExceeded {
			c.slot.be.requestEnded(o, err) // the backend did not answer in time (see requestEnded)
		}
	}
	o.complete(result{err: err})
}
