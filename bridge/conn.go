package bridge

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/internal/cork"
	"github.com/wsbridge/wsbridge/internal/queue"
	"github.com/wsbridge/wsbridge/internal/writer"
	"github.com/wsbridge/wsbridge/internal/wsutil"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// conn is one open backend WebSocket. serve runs its reader, writer and
// pinger and returns once all three have exited and every request still
// registered on it has been given its outcome.
type conn struct {
	// Static after newConn.
	slot  *slot
	b     *Bridge
	ws    *websocket.Conn
	raw   net.Conn            // the TCP connection under ws, when known
	sock  *cork.Conn          // the corkable, non-blocking conn under ws; nil if none
	sendq *queue.Queue[*op]   // requests waiting for the writer; MaxInFlight bounds it
	w     *writer.Writer[*op] // the socket's one writer
	lost  chan struct{}       // closed by fail: the connection is out of service

	pending pendingTable
	// lastUse is when a request was last written (unix nanoseconds), for
	// the idle close (Options.IdleTimeout).
	lastUse atomic.Int64

	failOnce sync.Once
	cause    error // written once by fail before lost is closed
}

// errIdle ends a connection that nothing used for Options.IdleTimeout.
var errIdle = errors.New("closed after being idle")

func newConn(s *slot, ws *websocket.Conn, raw net.Conn) *conn {
	// The reader enforces Options.MaxReplyBytes itself (see readLoop):
	// coder/websocket's own limit would close the socket, failing every
	// call on it for one reply's size.
	ws.SetReadLimit(-1)
	c := &conn{
		slot:  s,
		b:     s.b,
		ws:    ws,
		raw:   raw,
		sock:  cork.Of(raw),
		sendq: queue.New[*op](0),
		lost:  make(chan struct{}),
	}
	c.w = writer.New(writer.Options[*op]{
		Sock: c.sock, Queue: c.sendq, Timeout: s.b.opts.WriteTimeout, Done: c.lost,
		Write: c.writeBatch, Written: c.written, Fail: c.fail,
	})
	return c
}

// fail takes the connection out of service. The first cause wins.
func (c *conn) fail(err error) {
	c.failOnce.Do(func() {
		c.cause = err
		c.slot.markLost(c)
		close(c.lost)
	})
}

// serve runs the connection until it fails or ctx is done (the Bridge is
// closing). It owns the reader, writer and pinger goroutines and waits for
// them before it settles the requests still pending.
func (c *conn) serve(ctx context.Context) error {
	// The socket's goroutines get a context of their own: coder/websocket
	// drops the TCP connection when a Read or Write context is cancelled,
	// which would pre-empt the 1001 close handshake on shutdown.
	ioCtx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { c.fail(c.readLoop(ioCtx)) })
	if c.b.opts.PingInterval > 0 {
		wg.Go(func() { c.fail(c.pingLoop(ioCtx)) })
	}
	if c.b.opts.IdleTimeout > 0 && !c.b.opts.Eager {
		c.lastUse.Store(time.Now().UnixNano())
		wg.Go(func() {
			if err := c.idleLoop(ioCtx); err != nil {
				c.fail(err)
			}
		})
	}

	closing := false // the Bridge is closing, or (retired) a reload removed the backend
	retired := false
	select {
	case <-c.lost:
		if errors.Is(c.cause, errIdle) {
			wsutil.Bounded(c.ws, c.raw, websocket.StatusNormalClosure, "idle", closeTimeout)
		} else {
			c.ws.CloseNow()
		}
	case <-ctx.Done():
		closing = true
		if c.slot.be.retired.Load() && !c.b.closing.Load() {
			retired = true
			c.fail(errRetired)
			wsutil.Bounded(c.ws, c.raw, websocket.StatusGoingAway, "backend removed from the gateway's configuration", closeTimeout)
			break
		}
		c.fail(errors.New("gateway is shutting down"))
		c.closeGoingAway()
	}
	cancel()
	wg.Wait()
	c.w.Stop()

	// Nothing writes any more, so each op's state is final.
	for _, o := range c.pending.takeAll() {
		written := !o.state.CompareAndSwap(opQueued, opAbandoned)
		switch {
		case retired && written:
			o.complete(result{err: newError(CodeReplyLost, "the backend was removed by a reload before it replied (it may have run the call)", errRetired)})
		case retired:
			o.complete(result{err: errNotSent}) // to a backend of the new set
		case closing && written:
			o.complete(result{err: errShutDownWritten()})
		case closing:
			o.complete(result{err: newError(CodeDraining, "gateway is shutting down; the call was never sent", nil)})
		case written && o.notify:
			o.complete(result{err: newError(CodeReplyLost, "backend connection lost while the notification was written; it may not have been delivered", c.cause)})
		case written:
			o.complete(result{err: newError(CodeReplyLost, "backend connection lost after the request was written; the reply was lost (the backend may have run the call)", c.cause)})
		default:
			o.complete(result{err: errNotSent})
		}
	}
	return c.cause
}

// idleLoop ends the connection with errIdle once it has had no request,
// no call waiting for a reply, no subscription and no listener for
// Options.IdleTimeout. It returns nil when ctx ends.
func (c *conn) idleLoop(ctx context.Context) error {
	every := c.b.opts.IdleTimeout / 4
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil
		}
		idleFor := time.Since(time.Unix(0, c.lastUse.Load()))
		if idleFor >= c.b.opts.IdleTimeout && c.pending.size.Load() == 0 && c.sendq.Len() == 0 && !c.b.hub.usesSlot(c.slot.idx) {
			return errIdle
		}
	}
}

// closeTimeout bounds the 1001 close handshake at shutdown.
const closeTimeout = time.Second

// closeGoingAway tells the backend we are going away (this also ends the
// reader), waiting at most closeTimeout for its answer.
func (c *conn) closeGoingAway() {
	wsutil.Bounded(c.ws, c.raw, websocket.StatusGoingAway, "gateway shutting down", closeTimeout)
}

// errShutDownWritten is the outcome of a call whose request was written
// when the Bridge closed: the backend may have run it.
func errShutDownWritten() *Error {
	return newError(CodeReplyLost, "the gateway shut down before the backend replied (the backend may have run the call)", nil)
}

// sendCancel tells the backend, if configured, that the caller of id gave
// up. Best effort: it is dropped when the writer's queue is full.
func (c *conn) sendCancel(id uint64) {
	if c.b.cancelMethod == nil {
		return
	}
	params := strconv.AppendUint([]byte(`{"id":`), id, 10)
	o := &op{notify: true, frame: jsonrpc.AppendRequest(nil, 0, false, c.b.cancelMethod, append(params, '}'))}
	c.send(o) // not in pending: nothing answers a notification
}

// send writes o, or queues it for the writer (see package writer): at
// low load the calling goroutine (a client's reader, the backend's own
// reader, a timer) writes the frame itself; it never waits for the
// backend.
func (c *conn) send(o *op) { c.w.Send(o, true) }

// writeBatch writes ops (the writer's Write) unless their callers gave
// up, one frame each or, with Options.Batch, as JSON-RPC batches. An
// error means the connection is lost (ops not written go out on the next
// one).
func (c *conn) writeBatch(ctx context.Context, batch []*op) (bool, error) {
	if c.b.opts.IdleTimeout > 0 {
		c.lastUse.Store(time.Now().UnixNano())
	}
	if c.b.opts.Batch && len(batch) > 1 {
		return false, c.writeBatches(ctx, batch)
	}
	for _, o := range batch {
		if err := c.writeOne(ctx, o); err != nil {
			return false, err
		}
	}
	return false, nil
}

// written completes a notification once it is written (the writer's
// Written): Notify returns then.
func (c *conn) written(o *op) {
	if o.notify && o.state.Load() == opWritten && c.pending.take(o.id) != nil {
		o.complete(result{})
	}
}

// writeBatches writes the ops as JSON-RPC batches (arrays), each within
// the message limit (Options.Batch).
func (c *conn) writeBatches(ctx context.Context, ops []*op) error {
	frame := make([]byte, 0, 4096)
	var inFrame []*op
	flush := func() error {
		if len(inFrame) == 0 {
			return nil
		}
		frame = append(frame, ']')
		now := time.Now().UnixNano()
		ids := make([]uint64, len(inFrame))
		for i, o := range inFrame {
			ids[i] = o.id
		}
		for _, o := range inFrame {
			o.sentAt.Store(now)
			o.batch.Store(&ids)
		}
		if err := c.ws.Write(ctx, websocket.MessageText, frame); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		c.b.counters.messagesOut.Add(uint64(len(inFrame)))
		c.b.counters.framesOut.Add(1)
		c.slot.be.counters.framesOut.Add(1)
		c.slot.be.counters.requestsOut.Add(uint64(len(inFrame)))
		frame, inFrame = frame[:0], inFrame[:0]
		return nil
	}
	for _, o := range ops {
		select {
		case <-c.lost:
			return errors.New("connection lost")
		default:
		}
		if int64(len(frame)+len(o.frame)+2) > c.b.opts.MaxMessageBytes {
			if err := flush(); err != nil {
				return err
			}
		}
		if !o.state.CompareAndSwap(opQueued, opWritten) {
			continue
		}
		if len(inFrame) == 0 {
			frame = append(frame, '[')
		} else {
			frame = append(frame, ',')
		}
		frame = append(frame, o.frame...)
		inFrame = append(inFrame, o)
	}
	return flush()
}

// writeOne writes o unless its caller gave up. An error means the
// connection is lost (queued ops go out on the next one).
func (c *conn) writeOne(ctx context.Context, o *op) error {
	select {
	case <-c.lost:
		return errors.New("connection lost")
	default:
	}
	if !o.state.CompareAndSwap(opQueued, opWritten) {
		return nil // the caller gave up before it was sent
	}
	o.sentAt.Store(time.Now().UnixNano())
	if err := c.ws.Write(ctx, websocket.MessageText, o.frame); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	c.b.counters.messagesOut.Add(1)
	c.b.counters.framesOut.Add(1)
	c.slot.be.counters.framesOut.Add(1)
	c.slot.be.counters.requestsOut.Add(1)
	return nil
}

func (c *conn) pingLoop(ctx context.Context) error {
	t := time.NewTicker(c.b.opts.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, c.b.opts.PingTimeout)
			err := c.ws.Ping(pctx)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("no pong within %v: %w", c.b.opts.PingTimeout, err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *conn) readLoop(ctx context.Context) error {
	for {
		// Not ctx: a read context costs coder/websocket a timer per
		// message; serve closes the socket to end the read.
		typ, frame, err := wsutil.ReadMessage(context.Background(), c.ws, c.b.opts.MaxReplyBytes)
		if tl, ok := errors.AsType[*wsutil.TooLargeError](err); ok {
			c.oversize(tl)
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		switch {
		case typ != websocket.MessageText:
			// JSON-RPC over WebSocket is text; a reply in a binary frame
			// fails its caller at once rather than at its deadline.
			c.broken(frame, errBinary)
		case !utf8.Valid(frame):
			// RFC 6455 requires UTF-8 in text frames; passing it on would
			// break clients' text frames and proto strings alike.
			c.broken(frame, errNotUTF8)
		default:
			c.handleFrame(frame)
		}
	}
}

// handleFrame routes every message of one text frame.
func (c *conn) handleFrame(frame []byte) {
	var buf [1]jsonrpc.Message // most frames hold one message: no allocation
	msgs, _, err := jsonrpc.ParseMessages(buf[:0], frame)
	if err != nil {
		c.broken(frame, err)
		return
	}
	for i := range msgs {
		c.b.counters.messagesIn.Add(1)
		c.handleMessage(&msgs[i])
	}
}

func (c *conn) handleMessage(m *jsonrpc.Message) {
	b := c.b
	raw := m.Raw
	if m.Err != nil {
		c.broken(raw, m.Err)
		return
	}
	switch m.Kind() {
	case jsonrpc.KindNotification:
		method, ok := jsonrpc.String(m.Method)
		if !ok {
			b.counters.malformed.Add(1)
			b.opts.Logger.Warn("backend sent a notification whose method is not a string; dropped", "frame", excerpt(raw))
			return
		}
		b.counters.notifications.Add(1)
		b.hub.route(c.slot.idx, method, m.Params)
		return
	case jsonrpc.KindRequest:
		b.counters.backendRequests.Add(1)
		// A peer that sends a pending call's own request back (an echo
		// server, a proxy looping) is not a JSON-RPC server: that caller
		// fails at once instead of at its deadline.
		if id, _, ok := jsonrpc.GatewayID(m.ID); ok {
			if o, _, _ := c.pending.takeReply(id); o != nil {
				b.opts.Logger.Warn("backend sent a request with the id of a pending call (does it speak JSON-RPC?); that call fails", "frame", excerpt(raw))
				o.complete(result{err: newError(CodeMalformedReply, "the backend sent a request back instead of a reply (is it a JSON-RPC 2.0 server?)", nil)})
				return
			}
		}
		b.opts.Logger.Warn("backend sent a request; the gateway serves none, dropped", "frame", excerpt(raw))
		return
	case jsonrpc.KindInvalid:
		b.counters.malformed.Add(1)
		b.opts.Logger.Warn("backend sent a message with neither id nor method; dropped", "frame", excerpt(raw))
		return
	}

	id, wrongType, ok := jsonrpc.GatewayID(m.ID)
	var o *op
	var lateHook resultHook
	var late bool
	if ok {
		o, lateHook, late = c.pending.takeReply(id)
	}
	if o == nil {
		if late && !wrongType {
			b.counters.late.Add(1)
			if lateHook != nil {
				if value, _, err := m.Reply(); err == nil && value != nil {
					lateHook(c.slot.idx, value)
				}
			}
			return
		}
		b.counters.unknown.Add(1)
		b.opts.Logger.Debug("backend reply matches no call; dropped", "id", excerpt(m.ID))
		return
	}
	value, rpcErr, err := m.Reply()
	if err == nil && wrongType {
		err = errIDType
	}
	switch {
	case err != nil:
		b.counters.malformed.Add(1)
		o.complete(result{err: newError(CodeMalformedReply, "backend reply is not valid JSON-RPC 2.0", err)})
	case rpcErr != nil:
		if b.opts.DropErrorData {
			rpcErr.Data = nil
		}
		o.complete(result{err: &Error{Code: CodeBackendError, Message: rpcErr.Error(), RPC: rpcErr}})
	default:
		if o.onResult != nil {
			o.onResult(c.slot.idx, value)
		}
		o.complete(result{value: value})
	}
	if at := o.sentAt.Load(); at != 0 {
		c.slot.be.lat.Record(time.Duration(time.Now().UnixNano() - at))
	}
}

var (
	errNotUTF8 = errors.New("text frame is not valid UTF-8")
	errBinary  = errors.New("binary frame (JSON-RPC over WebSocket is text)")
	errIDType  = errors.New("reply id is a string; the request's id was a number")
)

// broken handles a frame or message that cannot be routed as it is: it is
// counted and logged, and the callers it names at its top level fail at
// once with CodeMalformedReply.
func (c *conn) broken(raw []byte, cause error) {
	c.b.counters.malformed.Add(1)
	c.b.opts.Logger.Warn("backend sent an invalid frame", "err", cause, "bytes", len(raw), "frame", excerpt(raw))
	c.failNamed(raw, func() *Error { return newError(CodeMalformedReply, "backend reply is not valid JSON-RPC 2.0", cause) })
}

// oversize handles a message over Options.MaxReplyBytes, which the reader
// has discarded but for its head: it is counted and logged, and the
// callers its head names at its top level fail at once with CodeTooLarge.
// Their calls alone fail: the connection carries on.
func (c *conn) oversize(tl *wsutil.TooLargeError) {
	c.b.counters.messagesIn.Add(1)
	c.b.counters.oversize.Add(1)
	n := 0
	for _, rawID := range jsonrpc.BrokenFrameIDs(tl.Head) {
		id, _, ok := jsonrpc.GatewayID(rawID)
		if !ok {
			continue
		}
		o, _, _ := c.pending.takeReply(id)
		if o == nil {
			continue
		}
		batch := o.batch.Load()
		if batch == nil {
			o.complete(result{err: newError(CodeTooLarge, fmt.Sprintf("the backend's reply was larger than the %d-byte reply limit (%d bytes); it was discarded", tl.Limit, tl.Size), nil)})
			n++
			continue
		}
		// A JSON-RPC batch's replies come in one message: every call
		// written in that batch fails now, not just those named before
		// the cut (the rest would wait for their deadlines).
		err := newError(CodeTooLarge, fmt.Sprintf("the backend answered the batch this call was sent in (--backend-batch) with one message larger than the %d-byte reply limit (%d bytes); it was discarded", tl.Limit, tl.Size), nil)
		o.complete(result{err: err})
		n++
		for _, other := range *batch {
			if p, _, _ := c.pending.takeReply(other); p != nil {
				p.complete(result{err: err})
				n++
			}
		}
		break // one message answers one batch
	}
	c.b.opts.Logger.Warn("backend sent a message over the reply limit; discarded", "bytes", tl.Size, "limit", tl.Limit,
		"callers_failed", n, "frame", excerpt(tl.Head))
}

// failNamed fails, each with an error of fail's, the callers waiting for
// the replies that raw names at its top level (see jsonrpc.BrokenFrameIDs;
// raw may be cut off), and returns how many there were. A frame that
// names no caller reliably fails no one.
func (c *conn) failNamed(raw []byte, fail func() *Error) int {
	n := 0
	for _, rawID := range jsonrpc.BrokenFrameIDs(raw) {
		id, _, ok := jsonrpc.GatewayID(rawID)
		if !ok {
			continue
		}
		if o, _, _ := c.pending.takeReply(id); o != nil {
			o.complete(result{err: fail()})
			n++
		}
	}
	return n
}

// excerpt is the start of a frame for a log line: at most 64 bytes, quoted
// so that control bytes and invalid UTF-8 cannot garble the log.
func excerpt(raw []byte) string {
	const n = 64
	if len(raw) > n {
		return strconv.Quote(string(raw[:n])) + "…"
	}
	return strconv.Quote(string(raw))
}
