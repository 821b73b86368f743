package server

import (
	"errors"
	"io"
	"mime"
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
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
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

	ctx := r.Context()
	reqs, batch := parseClientFrame(body)
	var mu sync.Mutex
	var replies [][]byte
	var wg sync.WaitGroup
	for _, req := range reqs {
		switch {
		case req.invalid != nil:
			replies = append(replies, appendError(nil, req.id, req.invalid))
		case req.isNotification():
			wg.Go(func() { s.notifyFor(ctx, faceRPC, req.method, req.params) })
		default:
			wg.Go(func() {
				res, _, err := s.callFor(ctx, faceRPC, nil, req.method, req.params)
				if frame := reply(req.id, res, err); frame != nil {
					mu.Lock()
					replies = append(replies, frame)
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	if len(replies) == 0 {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	out := replies[0]
	if batch {
		out = joinArray(replies)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(out, '\n'))
}
