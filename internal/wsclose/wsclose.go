// Package wsclose closes a WebSocket with a close handshake that a silent
// peer cannot stretch: coder/websocket alone waits up to 5 s to write the
// close frame and 5 s more for the answer.
package wsclose

import (
	"net"
	"time"

	"github.com/coder/websocket"
)

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
