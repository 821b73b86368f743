package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/internal/cork"
	"github.com/wsbridge/wsbridge/internal/queue"
	"github.com/wsbridge/wsbridge/internal/wsutil"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// wsClient is the /ws face: the transport of one client's session
// (JSON-RPC 2.0 over WebSocket). The handler goroutine reads and hands
// each message to the session; a writer goroutine sends from out; the
// writer pings the client now and then, each ping on a short-lived
// goroutine. Calls need no goroutine (see session). The handler owns the
// writer and the pings (tasks) and returns after they have exited.
type wsClient struct {
	// Static after serveWS set them up.
	s     *Server
	conn  *websocket.Conn
	raw   net.Conn             // the hijacked connection under conn
	out   *queue.Queue[[]byte] // frames for the writer; bounded by ClientBuffer
	ended chan struct{}        // closed by end
	tasks sync.WaitGroup       // writer, pings, close handshake
	ss    *session             // the client's session; set before the writer starts

	endOnce sync.Once
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if !s.wsAdmit() {
		http.Error(w, "gateway is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.wsClients.Done()
	n := s.wsReserved.Add(1)
	defer s.wsReserved.Add(-1)
	if max := s.opts.MaxClients; max > 0 && n > int64(max) {
		s.counters.refusedClients.Add(1)
		http.Error(w, "too many WebSocket clients", http.StatusServiceUnavailable)
		return
	}
	accept := &websocket.AcceptOptions{OriginPatterns: s.opts.WSOrigins, Subprotocols: []string{wsSubprotocol}}
	hj := &hijackRecorder{ResponseWriter: w}
	conn, err := websocket.Accept(hj, r, accept)
	if err != nil {
		return // Accept has written the HTTP error (403 for a foreign origin)
	}
	if hj.conn != nil {
		// The HTTP server's read deadline must not end the WebSocket.
		_ = hj.conn.SetDeadline(time.Time{})
	}
	conn.SetReadLimit(s.bridge.MaxMessageBytes())
	s.counters.wsUpgrades.Add(1)
	s.counters.activeWS.Add(1)
	defer s.counters.activeWS.Add(-1)

	c := &wsClient{
		s: s, conn: conn, raw: hj.conn,
		out:   queue.NewSized(s.opts.ClientBuffer, s.opts.ClientBufferBytes, func(b []byte) int { return len(b) }),
		ended: make(chan struct{}),
	}
	// The session outlives the handshake's request: its context carries
	// only the connection's client.
	// The session outlives the upgrade request; it keeps the request's
	// client and, for tracing, its span as the parent of its calls'.
	base := context.WithValue(context.Background(), clientKey{}, clientOf(r.Context()))
	if sc := trace.SpanContextFromContext(r.Context()); sc.IsValid() {
		base = trace.ContextWithSpanContext(base, sc)
	}
	ss := s.newSession(base, faceWS, c, true)
	c.ss = ss
	s.trackSession(ss, func() { c.end(websocket.StatusGoingAway, "gateway shutting down") })
	defer s.untrackSession(ss)

	if id := identityOf(r.Context()); id != nil {
		unhold := s.holdToken(id.token, func() { c.end(websocket.StatusPolicyViolation, "token revoked") })
		defer unhold()
	}

	c.tasks.Go(c.writeLoop)
	err = c.readLoop(ss)

	// The client is gone (or being closed): end its session (its calls
	// are cancelled, its subscriptions released), and wait for every
	// goroutine of this client. A read that failed without a close frame
	// was a protocol violation (or a dead connection, where the close
	// frame goes nowhere).
	if websocket.CloseStatus(err) == -1 {
		c.end(websocket.StatusProtocolError, "protocol error")
	} else {
		c.end(websocket.StatusNormalClosure, "")
	}
	ss.close()
	c.tasks.Wait()
	_ = conn.CloseNow()
}

// end closes the client with code and reason, once. The close handshake
// runs in its own goroutine; the reader sees the end of the connection.
func (c *wsClient) end(code websocket.StatusCode, reason string) {
	c.endOnce.Do(func() {
		close(c.ended)
		c.tasks.Go(func() { wsutil.Bounded(c.conn, c.raw, code, reason, closeTimeout) })
	})
}

// closeTimeout bounds a close handshake with a client that does not answer.
const closeTimeout = time.Second

// hijackRecorder keeps the connection websocket.Accept hijacks, so that a
// close handshake can be cut short.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
}

func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the response writer cannot hijack")
	}
	c, rw, err := hj.Hijack()
	h.conn = c
	return c, rw, err
}

// readLoop reads until the connection ends and returns why. A text frame
// must be UTF-8 (RFC 6455: else 1007). A binary frame is served like a
// text one when it holds UTF-8 JSON-RPC, and otherwise answered with
// -32700; replies always go out as text.
func (c *wsClient) readLoop(ss *session) error {
	for {
		// Reads use a context that is never cancelled: cancelling a read
		// drops the TCP connection without the close handshake.
		typ, data, err := wsutil.ReadMessage(context.Background(), c.conn)
		if err != nil {
			return err
		}
		if typ == websocket.MessageText && !utf8.Valid(data) {
			c.end(websocket.StatusInvalidFramePayloadData, "text frame is not valid UTF-8")
			return nil
		}
		ss.serveMessage(data)
	}
}

// reply queues the JSON-RPC reply, or a batch's (sessionOut).
func (c *wsClient) reply(batch bool, replies []reply) bool {
	return c.send(jsonReplies(batch, replies))
}

// notify queues a notification (sessionOut).
func (c *wsClient) notify(method string, params json.RawMessage) bool {
	return c.send(jsonrpc.AppendNotification(nil, method, params))
}

// leave queues the close (1001) behind the frames already queued
// (sessionOut).
func (c *wsClient) leave() {
	if !c.out.Push(nil) { // nil: the writer closes with 1001 there
		c.end(websocket.StatusGoingAway, "gateway shutting down")
	}
}

// endSlow closes a client that cannot keep up with 1008 (sessionOut).
func (c *wsClient) endSlow(reason string) { c.end(websocket.StatusPolicyViolation, reason) }

// send queues a frame for the client. It reports false when the queue is
// full: the client cannot keep up (the session ends it). Frames for a
// client that has ended are dropped.
func (c *wsClient) send(frame []byte) bool {
	select {
	case <-c.ended:
		return true
	default:
	}
	return c.out.Push(frame)
}

// writeLoop sends queued frames, all that are queued under one cork so that
// they leave in one system call, and pings the client every
// ClientPingInterval (each ping on a short-lived goroutine, since it waits
// for the pong).
func (c *wsClient) writeLoop() {
	corked := cork.Of(c.raw)
	ping := time.NewTicker(c.s.opts.ClientPingInterval)
	defer ping.Stop()
	var pinging atomic.Bool
	var batch [][]byte
	for {
		select {
		case <-c.out.Ready():
		case <-ping.C:
			if pinging.CompareAndSwap(false, true) {
				c.tasks.Go(func() {
					defer pinging.Store(false)
					c.pingOnce()
				})
			}
			continue
		case <-c.ended:
			return
		}
		runtime.Gosched() // let replies about to be queued join this batch
		batch = c.out.Take(batch)
		if len(batch) == 0 {
			continue
		}
		ctx, end := cork.Batch(corked, context.Background(), c.s.opts.ClientWriteTimeout)
		var err error
		leave := false
		for _, frame := range batch {
			if frame == nil { // queued by leaveIfIdle behind the last reply
				leave = true
				break
			}
			if err = c.conn.Write(ctx, websocket.MessageText, frame); err != nil {
				break
			}
		}
		clear(batch)
		if err = end(err); err != nil {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
				c.ss.slow("write timeout: client too slow")
			}
			c.end(websocket.StatusPolicyViolation, "write failed")
			return
		}
		if leave {
			c.end(websocket.StatusGoingAway, "gateway shutting down")
			return
		}
	}
}

// pingOnce pings the client; no pong in time ends it.
func (c *wsClient) pingOnce() {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.opts.ClientWriteTimeout)
	defer cancel()
	if err := c.conn.Ping(ctx); err != nil {
		c.end(websocket.StatusPolicyViolation, "no pong")
	}
}

// wsAdmit counts a new /ws handler unless the server is shutting down.
func (s *Server) wsAdmit() bool {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	if s.sessClosed {
		return false
	}
	s.wsClients.Add(1)
	return true
}

// trackSession registers a session that shutdown tells to go away, with
// kill to end it at once. A session that registers once shutdown has
// begun is told at once.
func (s *Server) trackSession(ss *session, kill func()) {
	s.sessMu.Lock()
	s.sessions[ss] = kill
	closed := s.sessClosed
	s.sessMu.Unlock()
	if closed {
		ss.goAway()
	}
}

func (s *Server) untrackSession(ss *session) {
	s.sessMu.Lock()
	delete(s.sessions, ss)
	s.sessMu.Unlock()
}

// sessionsGoAway refuses new /ws clients and ends each open session (/ws,
// gRPC Session) as soon as its calls are answered: with 1001, or with
// UNAVAILABLE (reason draining).
func (s *Server) sessionsGoAway() {
	s.sessMu.Lock()
	s.sessClosed = true
	live := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		live = append(live, ss)
	}
	s.sessMu.Unlock()
	for _, ss := range live {
		ss.goAway()
	}
}

// closeSessions waits until every /ws client has gone away (see
// sessionsGoAway) or ctx is done; then it ends the sessions left at once,
// cutting their calls, and waits for the /ws handlers, which end within
// closeTimeout (the close handshake is bounded and their calls are
// cancelled). gRPC Session handlers are waited for by the gRPC server.
func (s *Server) closeSessions(ctx context.Context) {
	s.sessionsGoAway()
	done := make(chan struct{})
	go func() { s.wsClients.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	s.sessMu.Lock()
	kills := make([]func(), 0, len(s.sessions))
	for _, kill := range s.sessions {
		kills = append(kills, kill)
	}
	s.sessMu.Unlock()
	for _, kill := range kills {
		kill()
	}
	<-done
}
