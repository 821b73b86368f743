// Package cork is the gateway's socket layer under coder/websocket, shared
// by the backend link and the /ws clients: how writes are batched and made
// non-blocking, and how an idle socket holds no buffer.
//
// coder/websocket flushes every message to the connection. A writer with
// several messages to send corks the connection, writes them all, and
// uncorks, so that they leave in one system call (and, with TCP_NODELAY,
// in as few packets as they fit).
//
// A Conn can also be made non-blocking (NonBlocking): then no Write waits
// for the socket. What the socket takes at once goes out; the rest is held
// in order, and the Conn's owner flushes it (Flush, with a deadline) on
// its writer goroutine. This is what lets any goroutine, even a socket's
// reader, write a frame itself when the socket is idle, instead of waking
// a writer goroutine for it (the low-load fast path): the write can never
// stall that goroutine on a peer that does not read.
package cork

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// maxBuffer caps what a corked, blocking Conn holds before it writes
// through.
const maxBuffer = 64 << 10

// controlSlack is what a non-blocking Conn holds beyond its last batch
// for writes made outside the owner's batches (pongs, pings, the close
// frame) before it fails them: a peer that sends pings and never reads
// must not make the gateway buffer without bound.
const controlSlack = 64 << 10

// ErrTooSlow is the write error of a non-blocking Conn whose peer has not
// taken controlSlack bytes of control frames.
var ErrTooSlow = errors.New("peer does not read: too many bytes held")

// Conn is a net.Conn whose writes can be held back with Cork and sent
// together with Uncork. It is safe for concurrent use.
type Conn struct {
	net.Conn
	raw syscall.RawConn // for non-blocking writes; nil when the conn has none

	mu sync.Mutex
	// Guarded by mu.
	corked      bool
	nonBlocking bool    // set once by NonBlocking
	onHeld      func()  // called (without mu) when a write outside a cork leaves bytes held
	flushing    bool    // Flush is writing held bytes without mu: writes queue behind
	held        []byte  // bytes written but not yet on the socket, in order
	heldBuf     *[]byte // the pooled buffer under held, nil when none
	limit       int     // the most held that a write outside a batch may grow to
	err         error   // the first write error, returned ever after
	// tryWrite's state (see there).
	wbuf []byte
	wn   int
	werr error

	// The read side, used by one reader at a time (coder/websocket reads
	// under its own lock), set up by ReadLazily before any read.
	lazy  bool
	rbuf  []byte  // what was read and not yet returned: a slice of *rpool
	rpool *[]byte // the pooled buffer under rbuf, nil when none is held
	peek  [1]byte // where the readiness check's MSG_PEEK lands (never read)

	// Static after Wrap: the callbacks handed to raw, made once.
	writeFn, readableFn func(fd uintptr) bool
}

// Wrap returns c as a Conn.
func Wrap(c net.Conn) *Conn {
	cc := &Conn{Conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		cc.raw, _ = sc.SyscallConn()
		cc.writeFn, cc.readableFn = cc.writeSome, cc.readable
	}
	return cc
}

// NonBlocking makes every later write return at once: what the socket does
// not take is held, and onHeld is called when a write made outside a cork
// (by another goroutine than the owner's batches) leaves bytes held; the
// owner then calls Flush. The owner's own batches learn it from Uncork.
func (c *Conn) NonBlocking(onHeld func()) {
	c.mu.Lock()
	c.nonBlocking, c.onHeld = true, onHeld
	c.mu.Unlock()
}

// Write holds p while corked, flushing or behind held bytes, else writes
// it: through (blocking) or, when non-blocking, as much as the socket takes
// at once, holding the rest.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.err != nil {
		defer c.mu.Unlock()
		return 0, c.err
	}
	if !c.nonBlocking {
		defer c.mu.Unlock()
		if c.corked && len(c.held)+len(p) <= maxBuffer {
			c.hold(p)
			return len(p), nil
		}
		if len(c.held) > 0 {
			if err := c.flushLocked(); err != nil {
				return 0, err
			}
		}
		n, err := c.Conn.Write(p)
		if err != nil {
			c.err = err
		}
		return n, err
	}
	if c.corked {
		c.hold(p)
		c.mu.Unlock()
		return len(p), nil
	}
	if c.flushing || len(c.held) > 0 {
		if len(c.held)+len(p) > c.limit {
			c.err = ErrTooSlow
			c.mu.Unlock()
			return 0, ErrTooSlow
		}
		c.hold(p)
		c.mu.Unlock()
		return len(p), nil
	}
	n, err := c.tryWrite(p)
	if err != nil {
		c.err = err
		c.mu.Unlock()
		return n, err
	}
	var onHeld func()
	if n < len(p) {
		c.limit = controlSlack
		c.hold(p[n:])
		onHeld = c.onHeld
	}
	c.mu.Unlock()
	if onHeld != nil {
		onHeld()
	}
	return len(p), nil
}

// heldPool recycles held buffers, so that a socket holds none while idle
// and a busy one does not allocate one per batch.
var heldPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// hold appends p to the held bytes. Called with mu held.
func (c *Conn) hold(p []byte) {
	if c.held == nil {
		c.heldBuf = heldPool.Get().(*[]byte)
		c.held = (*c.heldBuf)[:0]
	}
	c.held = append(c.held, p...)
}

// drop gives the held buffer back once it is all written. Called with mu
// held.
func (c *Conn) drop() {
	if c.heldBuf != nil && cap(c.held) <= maxBuffer {
		*c.heldBuf = c.held[:0]
		heldPool.Put(c.heldBuf)
	}
	c.held, c.heldBuf = nil, nil
}

func (c *Conn) flushLocked() error {
	_, err := c.Conn.Write(c.held)
	c.drop()
	if err != nil {
		c.err = err
	}
	return err
}

// Cork holds writes until Uncork.
func (c *Conn) Cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// Uncork writes what was held, with deadline as the write deadline, and
// stops holding. The write deadline is cleared afterwards: a corked batch
// is timed from its Cork (see SetWriteDeadline) to its Uncork. A
// non-blocking Conn writes what the socket takes at once (no deadline
// applies) and reports held: the rest is for Flush.
func (c *Conn) Uncork(deadline time.Time) (held bool, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if c.nonBlocking {
		if c.err != nil || len(c.held) == 0 || c.flushing {
			return len(c.held) > 0, c.err
		}
		n, err := c.tryWrite(c.held)
		if err != nil {
			c.err = err
			return false, err
		}
		if n == len(c.held) {
			c.drop()
			return false, nil
		}
		c.held = c.held[:copy(c.held, c.held[n:])]
		c.limit = len(c.held) + controlSlack
		return true, nil
	}
	defer c.Conn.SetWriteDeadline(time.Time{})
	if len(c.held) == 0 {
		return false, c.err
	}
	_ = c.Conn.SetWriteDeadline(deadline)
	return false, c.flushLocked()
}

// Flush writes what a non-blocking Conn holds, waiting for the socket until
// deadline. Writes made meanwhile queue behind and are flushed too. Only
// the owner's writer calls it.
func (c *Conn) Flush(deadline time.Time) error {
	c.mu.Lock()
	if len(c.held) == 0 || c.err != nil {
		defer c.mu.Unlock()
		return c.err
	}
	c.flushing = true
	_ = c.Conn.SetWriteDeadline(deadline)
	for len(c.held) > 0 && c.err == nil {
		buf, bufPtr := c.held, c.heldBuf
		c.held, c.heldBuf = nil, nil
		c.mu.Unlock()
		_, err := c.Conn.Write(buf)
		c.mu.Lock()
		if err != nil {
			c.err = err
		}
		if c.held == nil {
			c.held, c.heldBuf = buf[:0], bufPtr // keep the buffer: drop below gives it back
		} else if bufPtr != nil && cap(buf) <= maxBuffer {
			*bufPtr = buf[:0]
			heldPool.Put(bufPtr)
		}
	}
	_ = c.Conn.SetWriteDeadline(time.Time{})
	c.flushing = false
	if len(c.held) == 0 {
		c.drop()
	}
	err := c.err
	c.mu.Unlock()
	return err
}

// Held reports whether bytes wait for Flush.
func (c *Conn) Held() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held) > 0 && c.err == nil
}

// Batch starts writing a batch of messages through c (nil: a connection
// that cannot be corked) within timeout, for the socket writers of both
// sides. With c it corks and times the batch by the socket's deadline (a
// context deadline would cost coder/websocket a timer per message), and
// the returned ctx has no deadline; without c the ctx carries the timeout.
// Call end with the batch's write error: it uncorks (sending what was
// held; a non-blocking Conn then flushes the rest, waiting until the
// deadline) and returns the first error.
func Batch(c *Conn, parent context.Context, timeout time.Duration) (ctx context.Context, end func(error) error) {
	if c == nil {
		ctx, cancel := context.WithTimeout(parent, timeout)
		return ctx, func(err error) error { cancel(); return err }
	}
	deadline := time.Now().Add(timeout)
	if !c.isNonBlocking() {
		_ = c.SetWriteDeadline(deadline)
	}
	c.Cork()
	return context.Background(), func(err error) error {
		held, uerr := c.Uncork(time.Now().Add(timeout))
		if err == nil {
			err = uerr
		}
		if held {
			// Even after a failed message (the WebSocket closing) what was
			// written before it goes; a broken socket fails at once.
			if ferr := c.Flush(deadline); err == nil {
				err = ferr
			}
		}
		return err
	}
}

func (c *Conn) isNonBlocking() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nonBlocking
}

// readChunk is the size of the pooled read buffer; reads at least this
// large go straight to the socket.
const readChunk = 4096

var readPool = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}

// ReadLazily makes the Conn buffer its reads in a pooled buffer taken
// only once the socket is readable and given back once it is consumed, so
// that a connection waiting for its peer holds no read buffer (the reader
// above it can then use a tiny one). Call it before any read.
func (c *Conn) ReadLazily() { c.lazy = c.raw != nil }

// Read reads from the socket; see ReadLazily.
func (c *Conn) Read(p []byte) (int, error) {
	if len(c.rbuf) == 0 {
		if !c.lazy || len(p) >= readChunk {
			return c.Conn.Read(p)
		}
		if err := c.waitReadable(); err != nil {
			return 0, err
		}
		c.rpool = readPool.Get().(*[]byte)
		n, err := c.Conn.Read(*c.rpool)
		c.rbuf = (*c.rpool)[:n]
		if n == 0 {
			c.release()
			return 0, err
		}
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	if len(c.rbuf) == 0 {
		c.release()
	}
	return n, nil
}

// WaitReadable waits, holding no buffer, until the socket has bytes to
// read (or has ended) or the read deadline passes; it returns at once
// when bytes are buffered. For the reader only.
func (c *Conn) WaitReadable() error {
	if !c.lazy || len(c.rbuf) > 0 {
		return nil
	}
	return c.waitReadable()
}

// Unread puts p in front of what the socket will return: bytes a previous
// reader (the HTTP server's, before a hijack) read past its end. Call it
// after ReadLazily and before any read.
func (c *Conn) Unread(p []byte) {
	if len(p) == 0 {
		return
	}
	if len(p) <= readChunk {
		c.rpool = readPool.Get().(*[]byte)
		c.rbuf = (*c.rpool)[:copy(*c.rpool, p)]
		return
	}
	c.rbuf = bytes.Clone(p)
}

func (c *Conn) release() {
	if c.rpool != nil {
		readPool.Put(c.rpool)
	}
	c.rpool, c.rbuf = nil, nil
}

// Listener wraps every accepted connection in a Conn.
type Listener struct{ net.Listener }

// Accept returns the next connection as a *Conn.
func (l Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Wrap(c), nil
}

// Of returns the Conn under c (through a *tls.Conn or similar wrapper that
// has a NetConn method), or nil.
func Of(c net.Conn) *Conn {
	for c != nil {
		if cc, ok := c.(*Conn); ok {
			return cc
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}
