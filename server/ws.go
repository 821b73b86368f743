package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/internal/cork"
	"github.com/wsbridge/wsbridge/internal/queue"
	"github.com/wsbridge/wsbridge/internal/writer"
	"github.com/wsbridge/wsbridge/internal/wsutil"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

// wsClient is the /ws face: the transport of one client's session
// (JSON-RPC 2.0 over WebSocket). The handler goroutine reads and hands
// each message to the session. An idle client has no other goroutine:
// a reply or notification is written by the goroutine that produces it
// when the socket is idle (the socket never blocks, see cork), and a
// writer goroutine is started only when frames meet or the socket holds
// bytes back; it exits when the queue is empty. Pings run from a timer,
// each on a short-lived goroutine. The handler owns every goroutine of the
// client (tasks) and returns after they have exited.
type wsClient struct {
	// Static after serveWS set them up.
	s     *Server
	conn  *websocket.Conn
	raw   net.Conn               // the hijacked connection under conn
	sock  *cork.Conn             // the non-blocking socket under raw; nil if none
	br    *bufio.Reader          // coder/websocket's read buffer, when ours (see hijackRecorder)
	out   *queue.Queue[[]byte]   // frames queued while the socket is busy; bounded by ClientBuffer
	w     *writer.Writer[[]byte] // the socket's one writer
	ended chan struct{}          // closed by end
	tasks sync.WaitGroup         // writers, pings, close handshake
	ss    *session               // the client's session; set before the first frame
	st    *stream                // the client's stream (revocation, observation); set before the first frame
	ping  *time.Timer            // the next ping

	endOnce sync.Once
	// rstate is where the reader is: inside coder/websocket (readerIn),
	// between messages looking at its buffer and waiting on the socket
	// (readerBetween), or stopped for a close (readerStopped). A close
	// handshake reads too; coder/websocket orders it with its own reader,
	// but not with the reader's look between messages, so end and the
	// reader hand over through this state: a close never runs beside that
	// look. closeByServe: end found the reader between messages and left
	// the close handshake to serve (closeCode, closeReason), once the
	// reader has returned.
	rstate       atomic.Int32
	closeByServe atomic.Bool
	closeCode    websocket.StatusCode
	closeReason  string
	closing      sync.WaitGroup // the close handshake (a WaitGroup: no allocation per client)

	taskMu  sync.Mutex
	stopped bool // guarded by taskMu: the handler waits for tasks; start no more
	pinging bool // guarded by taskMu: a ping waits for its pong
	// paused is set while the reader waits for room in the client's byte
	// budget (backpressure): pings are not sent, and one under way that
	// gets no pong meanwhile does not end the client.
	paused atomic.Bool
}

// serveWS upgrades the request and hands the client to a goroutine of the
// Server (tracked by wsClients), then returns: the handler's goroutine has
// grown its stack on the HTTP handshake, and an idle client should not
// keep that stack for as long as it stays connected.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if !s.wsAdmit() {
		http.Error(w, "gateway is shutting down", http.StatusServiceUnavailable)
		return
	}
	handedOver := false
	defer func() {
		if !handedOver {
			s.wsClients.Done()
		}
	}()
	n := s.wsReserved.Add(1)
	defer func() {
		if !handedOver {
			s.wsReserved.Add(-1)
		}
	}()
	if max := s.maxClients.Load(); max > 0 && n > max {
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

	c := &wsClient{
		s: s, conn: conn, raw: hj.conn, sock: cork.Of(hj.conn), br: hj.br,
		out:   queue.NewSized(s.opts.ClientBuffer, s.opts.ClientBufferBytes, func(b []byte) int { return len(b) }),
		ended: make(chan struct{}),
	}
	c.w = writer.New(writer.Options[[]byte]{
		Sock: c.sock, Queue: c.out, Timeout: s.opts.ClientWriteTimeout, Done: c.ended,
		Write: c.write, Written: c.written, Fail: c.writeFailed,
	})
	// The session outlives the upgrade request; it keeps the request's
	// client and, for tracing, its span as the parent of its calls'.
	base := context.WithValue(context.Background(), clientKey{}, clientOf(r.Context()))
	if sc := trace.SpanContextFromContext(r.Context()); sc.IsValid() {
		base = trace.ContextWithSpanContext(base, sc)
	}
	if id := identityOf(r.Context()); id != nil {
		base = context.WithValue(base, identityKey{}, id)
	}
	handedOver = true
	go c.serve(base)
}

// serve runs the client until it has gone: it reads and hands each message
// to the session, then ends the session and waits for every goroutine of
// the client.
func (c *wsClient) serve(base context.Context) {
	s := c.s
	defer s.wsClients.Done()
	defer s.wsReserved.Add(-1)
	s.counters.activeWS.Add(1)
	defer s.counters.activeWS.Add(-1)

	ss := s.newSession(base, faceWS, c, true)
	c.ss = ss
	s.trackSession(ss, func() { c.end(websocket.StatusGoingAway, "gateway shutting down") })
	defer s.untrackSession(ss)
	c.st = s.openStream(base, faceWS, "/ws", streamCalls, func(error) { c.end(websocket.StatusPolicyViolation, "token revoked") })
	defer func() { c.st.close(nil) }()

	c.taskMu.Lock()
	c.ping = time.AfterFunc(s.opts.ClientPingInterval, c.pingTick)
	c.taskMu.Unlock()
	err := c.readLoop(ss)

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
	if c.closeByServe.Load() {
		_ = c.raw.SetReadDeadline(time.Time{}) // set by end to wake the reader
		c.closing.Add(1)
		c.tasks.Go(func() { c.closeHandshake(c.closeCode, c.closeReason) })
	}
	ss.close()
	// The close frame may still be held by the socket: a writer must be
	// able to start for it until the handshake is over.
	c.closing.Wait()
	c.taskMu.Lock()
	c.stopped = true
	c.taskMu.Unlock()
	c.ping.Stop()
	c.w.Stop()
	c.tasks.Wait()
	_ = c.conn.CloseNow()
}

// end closes the client with code and reason, once. The close handshake
// runs in its own goroutine; the reader sees the end of the connection.
func (c *wsClient) end(code websocket.StatusCode, reason string) {
	c.endOnce.Do(func() {
		close(c.ended)
		if c.rstate.CompareAndSwap(readerBetween, readerStopped) {
			// The reader is looking at its buffer or waiting on the
			// socket: wake it, and serve closes once it has returned.
			c.closeCode, c.closeReason = code, reason
			c.closeByServe.Store(true)
			_ = c.raw.SetReadDeadline(time.Now())
			return
		}
		// The reader is inside coder/websocket (or has returned): the
		// close runs beside it, ordered by coder/websocket's read lock.
		c.rstate.Store(readerStopped)
		c.closing.Add(1)
		c.tasks.Go(func() { c.closeHandshake(code, reason) })
	})
}

// Where the reader is (wsClient.rstate).
const (
	readerIn int32 = iota
	readerBetween
	readerStopped
)

// closeHandshake closes the client with code and reason, bounded by
// closeTimeout.
func (c *wsClient) closeHandshake(code websocket.StatusCode, reason string) {
	defer c.closing.Done()
	wsutil.Bounded(c.conn, c.raw, code, reason, closeTimeout)
}

// closeTimeout bounds a close handshake with a client that does not answer.
const closeTimeout = time.Second

// hijackRecorder keeps the connection websocket.Accept hijacks, so that a
// close handshake can be cut short.
type hijackRecorder struct {
	http.ResponseWriter
	conn net.Conn
	br   *bufio.Reader // the reader handed over, when ours
}

// Hijack hands coder/websocket the connection with buffers of the
// smallest size instead of the HTTP server's 4 KiB ones, which it would
// keep for the life of the connection: under them the socket reads into a
// pooled buffer only when it has bytes (cork.Conn.ReadLazily), and writes
// are corked, so that an idle client holds no buffer and a frame still
// leaves in one system call.
func (h *hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := h.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the response writer cannot hijack")
	}
	c, rw, err := hj.Hijack()
	h.conn = c
	sock := cork.Of(c)
	if err != nil || sock == nil || c != net.Conn(sock) {
		return c, rw, err // TLS or an unknown conn: as the server made it
	}
	sock.ReadLazily()
	// Bytes the client sent right behind the handshake go back in front of
	// the socket, where the reader (and its wait for readability) finds
	// them.
	pending, _ := rw.Reader.Peek(rw.Reader.Buffered())
	sock.Unread(pending)
	br := bufio.NewReaderSize(sock, 16)
	h.br = br
	return c, bufio.NewReadWriter(br, bufio.NewWriterSize(c, 16)), nil
}

// readLoop reads until the connection ends and returns why. A text frame
// must be UTF-8 (RFC 6455: else 1007). A binary frame is served like a
// text one when it holds UTF-8 JSON-RPC, and otherwise answered with
// -32700; replies always go out as text.
func (c *wsClient) readLoop(ss *session) error {
	for {
		// Backpressure: no more of the client's requests while those in
		// flight hold its byte budget. (No ping meanwhile: its pong would
		// wait behind the requests not read.)
		c.paused.Store(true)
		room := ss.waitForRoom(c.ended)
		c.paused.Store(false)
		if !room {
			return nil // ended while waiting
		}
		if !c.rstate.CompareAndSwap(readerIn, readerBetween) {
			return nil // a close has taken over
		}
		if c.br != nil && c.br.Buffered() == 0 {
			// Wait here, near the top of the stack, with no buffer: an
			// idle client's goroutine then keeps the smallest stack. An
			// error is for the read below to report.
			_ = c.sock.WaitReadable()
		}
		if !c.rstate.CompareAndSwap(readerBetween, readerIn) {
			return nil // end woke the reader: serve closes
		}
		// Reads use a context that is never cancelled: cancelling a read
		// drops the TCP connection without the close handshake. The
		// message limit is the connection's (SetReadLimit): over it, 1009.
		typ, data, err := wsutil.ReadMessage(context.Background(), c.conn, -1)
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
	return c.send(jsonReplies(batch, replies), !c.ss.othersDue(1))
}

// notify queues a notification (sessionOut).
func (c *wsClient) notify(method string, params json.RawMessage) bool {
	return c.send(jsonrpc.AppendNotification(nil, method, params), !c.ss.othersDue(0))
}

// leave queues the close (1001) behind the frames already queued
// (sessionOut).
func (c *wsClient) leave() {
	if !c.send(nil, true) { // nil: closes with 1001 behind what is queued
		c.end(websocket.StatusGoingAway, "gateway shutting down")
	}
}

// endSlow closes a client that cannot keep up with 1008 (sessionOut).
func (c *wsClient) endSlow(reason string) { c.end(websocket.StatusPolicyViolation, reason) }

// send writes a frame to the client, or queues it when the socket is busy
// (see package writer). It reports false when the queue is full: the
// client cannot keep up (the session ends it). Frames for a client that
// has ended are dropped. A nil frame is the close (1001) behind the
// frames before it.
//
// With alone (no other reply is due: the client is not pipelining) the
// calling goroutine, often the backend's reader delivering a reply,
// writes the frame itself when the socket is idle: no hand-off, no
// wake-up. Frames of a pipelining client are queued, so that they meet
// and leave together under one cork.
func (c *wsClient) send(frame []byte, alone bool) bool {
	if frame != nil {
		c.st.sent()
		c.ss.charge(int64(len(frame))) // until written (see written)
	}
	return c.w.Send(frame, alone)
}

// written gives a frame's bytes back to the client's budget once it is
// written (the writer's Written).
func (c *wsClient) written(frame []byte) {
	if frame != nil {
		c.ss.refund(int64(len(frame)))
	}
}

// write writes frames to the client (the writer's Write); a nil frame,
// queued by leave behind the last reply, closes with 1001.
func (c *wsClient) write(ctx context.Context, frames [][]byte) (bool, error) {
	for _, frame := range frames {
		if frame == nil {
			c.end(websocket.StatusGoingAway, "gateway shutting down")
			return true, nil
		}
		if err := c.conn.Write(ctx, websocket.MessageText, frame); err != nil {
			return false, err
		}
	}
	return false, nil
}

// writeFailed closes a client a write to which failed (the writer's Fail):
// one that did not take a batch within ClientWriteTimeout is too slow.
func (c *wsClient) writeFailed(err error) {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		c.ss.slow("write timeout: client too slow")
	}
	c.end(websocket.StatusPolicyViolation, "write failed")
}

// pingTick starts a ping unless one waits for its pong, and sets the next.
func (c *wsClient) pingTick() {
	c.taskMu.Lock()
	defer c.taskMu.Unlock()
	if c.stopped {
		return
	}
	if !c.pinging && !c.paused.Load() {
		c.pinging = true
		c.tasks.Go(func() {
			c.pingOnce()
			c.taskMu.Lock()
			c.pinging = false
			c.taskMu.Unlock()
		})
	}
	c.ping.Reset(c.s.opts.ClientPingInterval)
}

// pingOnce pings the client; no pong in time ends it.
func (c *wsClient) pingOnce() {
	ctx, cancel := context.WithTimeout(context.Background(), c.s.opts.ClientWriteTimeout)
	defer cancel()
	if err := c.conn.Ping(ctx); err != nil && !c.paused.Load() {
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
