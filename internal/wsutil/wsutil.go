// Package wsutil holds what the gateway's two WebSocket sides (backend and
// clients) do alike: a close handshake that a silent peer cannot stretch
// (coder/websocket alone waits up to 5 s to write the close frame and 5 s
// more for the answer), and message reads that allocate only what the
// message needs, within a limit of their own.
package wsutil

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// scratch holds the buffers messages are read into before they are copied
// out at their exact size.
var scratch = sync.Pool{New: func() any { return new([]byte) }}

// TooLargeError is ReadMessage's error for a message over its limit. The
// message has been read to its end, so the connection can read the next
// one.
type TooLargeError struct {
	Type  websocket.MessageType
	Limit int64
	// Size is the message's whole size in bytes.
	Size int64
	// Head is the message's first Limit bytes: where a reply's id is (a
	// JSON-RPC server writes "id" before "result").
	Head []byte
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("message of %d bytes is over the %d-byte limit", e.Size, e.Limit)
}

// ReadMessage reads the next message like (*websocket.Conn).Read, into a
// buffer of exactly its size (Read grows one from 512 bytes by doubling).
// A ctx without a Done channel costs coder/websocket no timer.
//
// With limit >= 0, a message over limit bytes is not held: its first limit
// bytes are kept, the rest is discarded as it is read, and the error is a
// *TooLargeError. No more than limit bytes are allocated for it. That
// limit is the caller's own: the connection's (SetReadLimit) closes the
// connection with 1009 instead; disable it (SetReadLimit(-1)) to use this
// one. A negative limit reads the message whole.
func ReadMessage(ctx context.Context, ws *websocket.Conn, limit int64) (websocket.MessageType, []byte, error) {
	typ, r, err := ws.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	bp := scratch.Get().(*[]byte)
	buf, more, err := readUpTo(r, (*bp)[:0], limit)
	if err != nil {
		*bp = buf
		scratch.Put(bp)
		return 0, nil, err
	}
	if more {
		// buf is the head the error hands over: not back to the pool.
		n, err := io.Copy(io.Discard, r)
		if err != nil {
			return 0, nil, err
		}
		return typ, nil, &TooLargeError{Type: typ, Limit: limit, Size: int64(len(buf)) + 1 + n, Head: buf}
	}
	msg := bytes.Clone(buf)
	*bp = buf
	scratch.Put(bp)
	return typ, msg, nil
}

// readUpTo appends r to buf until EOF or, with limit >= 0, until buf holds
// limit bytes and r has more (more is then true, and the byte read past
// buf is dropped). buf grows by doubling, never past limit.
func readUpTo(r io.Reader, buf []byte, limit int64) (_ []byte, more bool, _ error) {
	for {
		if len(buf) == cap(buf) {
			if limit >= 0 && int64(len(buf)) >= limit {
				var one [1]byte
				n, err := io.ReadFull(r, one[:])
				if err == io.EOF {
					return buf, false, nil
				}
				return buf, n == 1, err
			}
			size := max(2*cap(buf), 512)
			if limit >= 0 {
				size = int(min(int64(size), limit))
			}
			grown := make([]byte, len(buf), size)
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, false, nil
		}
		if err != nil {
			return buf, false, err
		}
	}
}

// Bounded closes ws with code and reason, and closes raw (the network
// connection under ws, when known) if the handshake has not completed
// within timeout. It returns once ws is closed.
func Bounded(ws *websocket.Conn, raw net.Conn, code websocket.StatusCode, reason string, timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ws.Close(code, reason)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	if raw != nil {
		_ = raw.Close()
	}
	<-done
}
