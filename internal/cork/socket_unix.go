//go:build unix

package cork

import "syscall"

// tryWrite writes as much of p as the socket takes without waiting and
// returns how much that was. Without a raw connection it writes nothing:
// the bytes are held and go out with Flush. Called with mu held: the
// attempt's state lives in the Conn, so that the callback handed to the
// raw connection is made once (in Wrap) and a write allocates nothing.
func (c *Conn) tryWrite(p []byte) (int, error) {
	if c.raw == nil {
		return 0, nil
	}
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.raw.Write(c.writeFn)
	n, werr := c.wn, c.werr
	c.wbuf, c.werr = nil, nil
	if werr == nil {
		werr = err
	}
	return n, werr
}

// writeSome is tryWrite's callback: it writes c.wbuf until the socket is
// full, and never asks to wait.
func (c *Conn) writeSome(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		m, err := syscall.Write(int(fd), c.wbuf[c.wn:])
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return true // full: the rest is held, never waited for
		case err != nil:
			c.werr = err
			return true
		case m <= 0:
			return true
		}
		c.wn += m
	}
	return true
}

// waitReadable waits, holding no buffer, until the socket has bytes to
// read (or its end, or an error), or the read deadline passes.
func (c *Conn) waitReadable() error { return c.raw.Read(c.readableFn) }

// readable is waitReadable's callback: done once a peek finds a byte (or
// the end, or an error).
func (c *Conn) readable(fd uintptr) bool {
	_, _, err := syscall.Recvfrom(int(fd), c.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}
