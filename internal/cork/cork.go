// Package cork lets a socket's writer batch small writes into one system
// call. coder/websocket flushes every message to the connection; a writer
// that has several messages queued corks the connection, writes them all,
// and uncorks, so they leave in one write (and, with TCP_NODELAY, in as few
// packets as they fit). Writes while uncorked go straight through, so
// control frames written by other goroutines (pongs, close) are never held
// back for long: only while a batch is being written.
package cork

import (
	"context"
	"net"
	"sync"
	"time"
)

// maxBuffer caps what a corked Conn holds before it writes through.
const maxBuffer = 64 << 10

// Conn is a net.Conn whose writes can be held back with Cork and sent
// together with Uncork. It is safe for concurrent use.
type Conn struct {
	net.Conn

	mu     sync.Mutex
	corked bool   // guarded by mu
	buf    []byte // guarded by mu: held writes
	err    error  // guarded by mu: the first write error, returned ever after
}

// Wrap returns c as a Conn.
func Wrap(c net.Conn) *Conn { return &Conn{Conn: c} }

// Write holds p while corked (up to maxBuffer), else writes it, after
// anything held.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.corked && len(c.buf)+len(p) <= maxBuffer {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	if len(c.buf) > 0 {
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

func (c *Conn) flushLocked() error {
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
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
// is timed from its Cork (see SetWriteDeadline) to its Uncork.
func (c *Conn) Uncork(deadline time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	defer c.Conn.SetWriteDeadline(time.Time{})
	if len(c.buf) == 0 {
		return c.err
	}
	_ = c.Conn.SetWriteDeadline(deadline)
	return c.flushLocked()
}

// Batch starts writing a batch of messages through c (nil: a connection
// that cannot be corked) within timeout, for the socket writers of both
// sides. With c it corks and times the batch by the socket's deadline (a
// context deadline would cost coder/websocket a timer per message), and
// the returned ctx has no deadline; without c the ctx carries the timeout.
// Call end with the batch's write error: it uncorks (sending what was
// held) and returns the first error.
func Batch(c *Conn, parent context.Context, timeout time.Duration) (ctx context.Context, end func(error) error) {
	if c == nil {
		ctx, cancel := context.WithTimeout(parent, timeout)
		return ctx, func(err error) error { cancel(); return err }
	}
	_ = c.SetWriteDeadline(time.Now().Add(timeout))
	c.Cork()
	return context.Background(), func(err error) error {
		if uerr := c.Uncork(time.Now().Add(timeout)); err == nil {
			err = uerr
		}
		return err
	}
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
