//go:build unix

package cork

import "syscall"

// tryWrite writes as much of p as the socket takes without waiting and
// returns how much that was. Without a raw connection it writes nothing:
// the bytes are held and go out with Flush.
func (c *Conn) tryWrite(p []byte) (int, error) {
	if c.raw == nil {
		return 0, nil
	}
	var n int
	var werr error
	err := c.raw.Write(func(fd uintptr) bool {
		for n < len(p) {
			m, err := syscall.Write(int(fd), p[n:])
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return true // full: the rest is held, never waited for
			case err != nil:
				werr = err
				return true
			case m <= 0:
				return true
			}
			n += m
		}
		return true
	})
	if werr == nil {
		werr = err
	}
	return n, werr
}

// waitReadable waits, holding no buffer, until the socket has bytes to
// read (or its end, or an error), or the read deadline passes.
func (c *Conn) waitReadable() error {
	return c.raw.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), c.peek[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN
	})
}
