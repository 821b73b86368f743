//go:build !unix

package cork

// tryWrite writes nothing where non-blocking writes are not available:
// the bytes are held and go out with Flush, on the owner's writer.
func (c *Conn) tryWrite(p []byte) (int, error) { return 0, nil }

func (c *Conn) writeSome(fd uintptr) bool { return true }

func (c *Conn) readable(fd uintptr) bool { return true }

// waitReadable is not needed: reads simply block.
func (c *Conn) waitReadable() error { return nil }
