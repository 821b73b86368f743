// Package wsutil holds what the gateway's two WebSocket sides (backend and
// clients) do alike: a close handshake that a silent peer cannot stretch
// (coder/websocket alone waits up to 5 s to write the close frame and 5 s
// more for the answer), and message reads that allocate only what the
// message needs.
package wsutil

import (
	"bytes"
	"context"
	"net"
	"sync"
	"time"

	"github.com/coder/websocket"
)

var scratch = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// ReadMessage reads the next message like (*websocket.Conn).Read, into a
// buffer of exactly its size (Read grows one from 512 bytes by doubling).
// A ctx without a Done channel costs coder/websocket no timer.
func ReadMessage(ctx context.Context, ws *websocket.Conn) (websocket.MessageType, []byte, error) {
	typ, r, err := ws.Reader(ctx)
	if err != nil {
		return 0, nil, err
	}
	buf := scratch.Get().(*bytes.Buffer)
	defer scratch.Put(buf)
	buf.Reset()
	if _, err := buf.ReadFrom(r); err != nil {
		return 0, nil, err
	}
	return typ, bytes.Clone(buf.Bytes()), nil
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
