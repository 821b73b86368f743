package server

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// Server-Sent Events: GET /v1/subscribe and GET /v1/stats:watch answer
// text/event-stream to a client that asks for it (Accept:
// text/event-stream), which a browser's EventSource reads; otherwise they
// answer grpc-gateway's newline-delimited JSON as before.
//
// Each event has an id, counting from 1 on each stream. Nothing is stored
// to replay: a client that reconnects with Last-Event-ID gets, on
// /v1/subscribe, a "gap" event first (the notifications since that id may
// have been missed), and ids go on from it; on /v1/stats:watch the next
// snapshot says all there is. A comment line every sseKeepAlive keeps
// proxies from closing an idle stream. When the gateway drains, or the
// subscription is lost, an "error" event ends the stream and EventSource
// reconnects (after the "retry" the stream announced), to another replica
// if there is one.

// sseKeepAlive is the time between keep-alive comments.
const sseKeepAlive = 15 * time.Second

// wantsSSE reports whether r asks for an event stream.
func wantsSSE(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "text/event-stream" {
			return true
		}
	}
	return false
}

// sseStream writes one event stream.
type sseStream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration // bound on each write
	id      uint64
	failed  bool // a write failed: the stream is over
}

func (s *Server) newSSE(w http.ResponseWriter, r *http.Request) *sseStream {
	e := &sseStream{w: w, rc: http.NewResponseController(w), timeout: s.opts.ClientWriteTimeout}
	if last, err := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64); err == nil {
		e.id = last
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: pass events on as they come
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, "retry: 1000\n\n")
	_ = e.rc.Flush()
	return e
}

// send writes one event (data is one line of JSON).
func (e *sseStream) send(event string, data []byte) error {
	e.id++
	_ = e.rc.SetWriteDeadline(time.Now().Add(e.timeout))
	if _, err := fmt.Fprintf(e.w, "id: %d\nevent: %s\ndata: %s\n\n", e.id, event, data); err != nil {
		e.failed = true
		return err
	}
	return e.flush()
}

// keepAlive writes a comment line.
func (e *sseStream) keepAlive() error {
	_ = e.rc.SetWriteDeadline(time.Now().Add(e.timeout))
	if _, err := fmt.Fprint(e.w, ": keep-alive\n\n"); err != nil {
		e.failed = true
		return err
	}
	return e.flush()
}

func (e *sseStream) flush() error {
	if err := e.rc.Flush(); err != nil {
		e.failed = true
		return err
	}
	return nil
}

// sendError ends the stream with an "error" event carrying err as
// google.rpc.Status JSON.
func (e *sseStream) sendError(err error) {
	st := statusOf(err)
	data, _ := protojson.Marshal(st.Proto())
	_ = e.send("error", data)
}

// serveSubscribeSSE is GET /v1/subscribe?methods=... as an event stream:
// an event "notification" per backend notification of those methods.
func (s *Server) serveSubscribeSSE(w http.ResponseWriter, r *http.Request) {
	methods := r.URL.Query()["methods"]
	if len(methods) == 0 {
		methods = []string{"*"}
	}
	ctx, end := context.WithCancelCause(r.Context())
	defer end(nil)
	st := s.openStream(ctx, faceREST, "GET /v1/subscribe", streamNotifications, end)
	out := newStreamOut[*wsbridgev1.Notification](s)
	n := s.newNotifications(ctx, out.noteFace(notificationProto, false))
	defer n.close()
	if err := n.listen(methods); err != nil {
		st.close(err)
		writeJSONError(w, err)
		return
	}
	e := s.newSSE(w, r)
	if e.id > 0 {
		gap, _ := json.Marshal(map[string]string{"lastEventId": strconv.FormatUint(e.id, 10), "reason": "notifications since may have been missed: nothing is replayed"})
		if err := e.send("gap", gap); err != nil {
			st.close(err)
			return
		}
	}
	err := out.run(ctx, func(n *wsbridgev1.Notification) error {
		data, err := protojson.Marshal(n)
		if err != nil {
			return nil
		}
		st.sent()
		return e.send("notification", data)
	}, e.keepAlive)
	e.end(r.Context(), err)
	st.close(err)
}

// serveStatsSSE is GET /v1/stats:watch?interval=1s as an event stream: an
// event "stats" with a snapshot every interval (at least 100 ms).
func (s *Server) serveStatsSSE(w http.ResponseWriter, r *http.Request) {
	interval := time.Second
	if v := r.URL.Query().Get("interval"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 100*time.Millisecond {
			http.Error(w, "interval must be a duration of at least 100ms, such as 1s", http.StatusBadRequest)
			return
		}
		interval = d
	}
	ctx, end := context.WithCancelCause(r.Context())
	defer end(nil)
	st := s.openStream(ctx, faceREST, "GET /v1/stats:watch", streamQuiet, end)
	e := s.newSSE(w, r)
	err := e.tick(ctx, interval, func() error {
		data, err := protojson.Marshal(proto.Message(s.snapshot()))
		if err != nil {
			return err
		}
		st.sent()
		return e.send("stats", data)
	})
	e.end(r.Context(), err)
	st.close(err)
}

// tick calls send at once and every interval, with a keep-alive comment
// between when the interval is long, until send fails or ctx is done
// (its cause is returned).
func (e *sseStream) tick(ctx context.Context, interval time.Duration, send func() error) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	keep := time.NewTicker(sseKeepAlive)
	defer keep.Stop()
	for {
		if err := send(); err != nil {
			return err
		}
		select {
		case <-t.C:
		case <-keep.C:
			if err := e.keepAlive(); err != nil {
				return err
			}
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// end ends the event stream for err (why it ended): an "error" event with
// the status, unless the client has left (clientCtx is done) or a write
// failed.
func (e *sseStream) end(clientCtx context.Context, err error) {
	if clientCtx.Err() != nil || err == nil || e.failed {
		return
	}
	e.sendError(streamStatus(err))
}

// statusOf is err as the gRPC status the faces answer with.
func statusOf(err error) *status.Status { return status.Convert(grpcError(err)) }

// writeJSONError answers err as grpc-gateway does: google.rpc.Status JSON
// with the HTTP status of the error table.
func writeJSONError(w http.ResponseWriter, err error) {
	data, _ := protojson.Marshal(statusOf(err).Proto())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(mappingFor(err).HTTP)
	_, _ = w.Write(append(data, '\n'))
}
