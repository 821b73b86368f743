//go:build !unix

package cork

// tryWrite writes nothing where non-blocking writes are not available:
// the bytes are held and go out with Flush, on the owner's writer.
func (c *Conn) tryWrite(p []byte) (int, error) { return 0, nil }

// waitReadable is not needed: ReadLazily needs a raw connection.
func (c *Conn) waitReadable() error { return nil }
