package server

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
)

// serveRPC is POST /rpc: JSON-RPC 2.0 over HTTP. The reply is HTTP 200 with
// the JSON-RPC response (errors as error objects), or 204 when the body held
// only notifications. Only transport failures use HTTP statuses: 405, 415,
// and 413 over the body limit.
func (s *Server) serveRPC(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "JSON-RPC over HTTP takes POST", http.StatusMethodNotAllowed)
		return
	}
	if !isJSON(r.Header.Get("Content-Type")) {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	limit := s.bridge.MaxMessageBytes()
	if r.ContentLength > limit {
		http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "cannot read the request body", http.StatusBadRequest)
		return
	}

	// One request is one short session: its calls run under the same
	// rules as on /ws, and the response waits for all of them.
	out := &rpcOut{}
	ss := s.newSession(r.Context(), faceRPC, out, false)
	ss.serveMessage(body)
	ss.wait(r.Context())
	ss.close()
	frame := out.take()
	if frame == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(frame, '\n'))
}

// rpcOut is the /rpc face's side of a session: it keeps the one reply (or
// batch of replies) a request gets, for the handler to write once the
// session is done.
type rpcOut struct {
	mu    sync.Mutex
	frame []byte // guarded by mu
}

func (o *rpcOut) reply(batch bool, replies []reply) bool {
	frame := jsonReplies(batch, replies)
	o.mu.Lock()
	o.frame = frame
	o.mu.Unlock()
	return true
}

func (o *rpcOut) take() []byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.frame
}

// notify is never called: /rpc cannot push, so its session has no
// consumer.
func (o *rpcOut) notify(string, json.RawMessage) bool { return true }

// leave and endSlow have nothing to end: the response is written once the
// calls are done.
func (o *rpcOut) leave()         {}
func (o *rpcOut) endSlow(string) {}
