package backend

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"strings"
)

// isWebSocketUpgrade reports whether r asks to switch to WebSocket. Only the
// Upgrade header is looked at: whether the rest of the handshake is right is
// websocket.Accept's business, and it answers a bad one itself.
func isWebSocketUpgrade(r *http.Request) bool {
	for _, v := range r.Header.Values("Upgrade") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "websocket") {
				return true
			}
		}
	}
	return false
}

// servePost answers one JSON-RPC 2.0 message (a request, a notification or
// a batch) sent as the body of a POST, the way the WebSocket path answers
// one frame. Each request is its own call: there is no connection for
// subscriptions to live on, so demo_subscribe and demo_unsubscribe answer
// with an error.
func (s *Server) servePost(w http.ResponseWriter, r *http.Request) {
	if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/json" {
		http.Error(w, "send JSON-RPC as Content-Type: application/json", http.StatusUnsupportedMediaType)
		return
	}
	// The same bound as a WebSocket message, so that neither face lets a
	// client make the backend buffer more.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.readLimit))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		}
		// Otherwise the client is gone or broke the body: nobody to answer.
		return
	}

	// A call ends when the client leaves or the Server shuts down, as it
	// does on a WebSocket.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()

	reply := s.handleMessage(ctx, body)
	switch {
	case reply != nil:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(reply)
	case s.ctx.Err() != nil:
		http.Error(w, "backend is shutting down", http.StatusServiceUnavailable)
	case ctx.Err() != nil:
		// The client left; there is nobody to answer.
	default:
		// Only notifications: JSON-RPC has nothing to send back.
		w.WriteHeader(http.StatusNoContent)
	}
}
