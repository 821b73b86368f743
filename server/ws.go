package server

import (
	"bufio"
	"bytes"
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

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/internal/cork"
	"github.com/wsbridge/wsbridge/internal/queue"
	"github.com/wsbridge/wsbridge/internal/wsutil"
)

// wsClient is one client of GET /ws: JSON-RPC 2.0 over WebSocket. The
// handler goroutine reads; a writer goroutine sends from out; a pinger
// checks the client is alive; each call runs in a goroutine of its own.
// The handler owns them all and returns after every one has exited.
type wsClient struct {
	// Static after newWSClient.
	s        *Server
	conn     *websocket.Conn
	raw      net.Conn // the hijacked connection under conn
	consumer *bridge.Consumer
	// ctx ends when the client goes; its calls are then abandoned.
	ctx    context.Context
	cancel context.CancelFunc
	out    *queue.Queue[[]byte] // frames for the writer; bounded by --client-buffer
	ended  chan struct{}        // closed by end
	calls  sync.WaitGroup
	tasks  sync.WaitGroup // writer, pinger, closer

	endOnce  sync.Once
	slowOnce sync.Once

	mu       sync.Mutex
	inflight map[string]func() // guarded by mu: the client's calls in flight by id, with their cancel (nil until known)
	// Guarded by mu, for going away at shutdown: unanswered counts calls
	// and batches whose reply is not queued yet; goingAway is set at
	// shutdown; leaving once the close is queued behind the last reply,
	// after which no call is started.
	unanswered int
	goingAway  bool
	leaving    bool
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
	accept := &websocket.AcceptOptions{OriginPatterns: s.opts.WSOrigins}
	if p, ok := r.Context().Value(subprotocolKey{}).(string); ok {
		accept.Subprotocols = []string{p}
	}
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

	ctx, cancel := context.WithCancel(context.Background())
	c := &wsClient{
		s: s, conn: conn, raw: hj.conn, ctx: ctx, cancel: cancel,
		out:      queue.New[[]byte](s.opts.ClientBuffer),
		ended:    make(chan struct{}),
		inflight: map[string]func(){},
	}
	c.consumer = s.bridge.NewConsumer(func(method string, params json.RawMessage) {
		c.send(appendNotification(nil, method, params))
	})
	s.trackWS(c, true)
	defer s.trackWS(c, false)

	c.tasks.Go(c.writeLoop)
	err = c.readLoop()

	// The client is gone (or being closed): abandon its calls, release its
	// subscriptions, and wait for every goroutine of this client. A read
	// that failed without a close frame was a protocol violation (or a
	// dead connection, where the close frame goes nowhere).
	if websocket.CloseStatus(err) == -1 {
		c.end(websocket.StatusProtocolError, "protocol error")
	} else {
		c.end(websocket.StatusNormalClosure, "")
	}
	c.cancel()
	c.cancelAll()
	c.calls.Wait()
	c.consumer.Close()
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

// readLoop reads until the connection ends and returns why.
func (c *wsClient) readLoop() error {
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
		c.handleFrame(data)
	}
}

func (c *wsClient) handleFrame(data []byte) {
	reqs, batch := parseClientFrame(data)
	if !batch {
		r := reqs[0]
		switch {
		case r.invalid != nil:
			c.send(appendError(nil, r.id, r.invalid))
		case r.isNotification():
			if !c.isLeaving() {
				c.calls.Go(func() { c.s.notifyFor(c.ctx, faceWS, r.method, r.params) })
			}
		default:
			if e := c.claim(r.id); e != nil {
				c.send(appendError(nil, r.id, e))
				return
			}
			// No goroutine per call: the outcome arrives on the bridge's
			// goroutines, which only queue the reply.
			id := bytes.Clone(r.id)
			cancel := c.s.goFor(faceWS, c.consumer, r.method, bytes.Clone(r.params), func(res json.RawMessage, release func(), err error) {
				c.release(id)
				if frame := reply(id, res, err); frame != nil {
					c.send(frame)
				}
				release()
				c.answered()
			})
			c.setCancel(id, cancel)
		}
		return
	}
	c.mu.Lock()
	c.unanswered++ // the batch's reply
	c.mu.Unlock()
	c.calls.Go(func() {
		c.serveBatch(reqs)
		c.answered()
	})
}

// serveBatch runs a batch's calls concurrently and sends one array of
// replies, in the order they completed.
func (c *wsClient) serveBatch(reqs []clientRequest) {
	var mu sync.Mutex
	var replies [][]byte
	var releases []func()
	add := func(frame []byte, release func()) {
		mu.Lock()
		if frame != nil {
			replies = append(replies, frame)
		}
		if release != nil {
			releases = append(releases, release)
		}
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for _, r := range reqs {
		switch {
		case r.invalid != nil:
			add(appendError(nil, r.id, r.invalid), nil)
		case r.isNotification():
			if !c.isLeaving() {
				wg.Go(func() { c.s.notifyFor(c.ctx, faceWS, r.method, r.params) })
			}
		default:
			if e := c.claim(r.id); e != nil {
				add(appendError(nil, r.id, e), nil)
				continue
			}
			wg.Go(func() {
				res, release, err := c.s.callFor(c.ctx, faceWS, c.consumer, r.method, r.params)
				c.release(r.id)
				add(reply(r.id, res, err), release)
				c.answered() // the call's own count; the batch's reply holds the close
			})
		}
	}
	wg.Wait()
	if len(replies) > 0 {
		c.send(joinArray(replies))
	}
	for _, release := range releases {
		release()
	}
}

func joinArray(elems [][]byte) []byte {
	n := 2
	for _, e := range elems {
		n += len(e) + 1
	}
	out := make([]byte, 0, n)
	out = append(out, '[')
	for i, e := range elems {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, e...)
	}
	return append(out, ']')
}

// claim registers a call id as in flight, or returns why it cannot be: the
// id is already in flight, or the client is at its in-flight cap.
func (c *wsClient) claim(id json.RawMessage) *rpcError {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leaving {
		return errGoingAway
	}
	if _, dup := c.inflight[string(id)]; dup {
		return errDuplicateID
	}
	if max := c.s.opts.MaxInFlightPerClient; max > 0 && len(c.inflight) >= max {
		return errClientOverCap
	}
	c.inflight[string(id)] = nil
	c.unanswered++
	return nil
}

// answered notes that a reply (or a batch's) is queued, and closes a client
// that is going away once nothing is left unanswered.
func (c *wsClient) answered() {
	c.mu.Lock()
	c.unanswered--
	c.mu.Unlock()
	c.leaveIfIdle()
}

// goAway closes the client with 1001 as soon as its calls are answered.
func (c *wsClient) goAway() {
	c.mu.Lock()
	c.goingAway = true
	c.mu.Unlock()
	c.leaveIfIdle()
}

// leaveIfIdle queues the close behind the replies already queued, once the
// client is going away with nothing unanswered. From then on no call is
// started, so every call that gets no reply before the 1001 was never
// passed to the backend.
func (c *wsClient) leaveIfIdle() {
	c.mu.Lock()
	leave := c.goingAway && c.unanswered == 0 && !c.leaving
	if leave {
		c.leaving = true
	}
	c.mu.Unlock()
	if leave && !c.out.Push(nil) { // nil: the writer closes with 1001 there
		c.end(websocket.StatusGoingAway, "gateway shutting down")
	}
}

// isLeaving reports whether the client's close is queued.
func (c *wsClient) isLeaving() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leaving
}

// setCancel records how to cancel the call id, unless it has ended already.
func (c *wsClient) setCancel(id json.RawMessage, cancel func()) {
	c.mu.Lock()
	if f, ok := c.inflight[string(id)]; ok && f == nil {
		c.inflight[string(id)] = cancel
	}
	c.mu.Unlock()
}

// cancelAll abandons every call in flight: the client has gone.
func (c *wsClient) cancelAll() {
	c.mu.Lock()
	var cancels []func()
	for _, f := range c.inflight {
		if f != nil {
			cancels = append(cancels, f)
		}
	}
	c.mu.Unlock()
	for _, f := range cancels {
		f()
	}
}

func (c *wsClient) release(id json.RawMessage) {
	c.mu.Lock()
	delete(c.inflight, string(id))
	c.mu.Unlock()
}

// send queues a frame for the client. A client whose queue is full cannot
// keep up: it is closed with 1008, so that it never holds up the backend
// reader or other clients.
func (c *wsClient) send(frame []byte) {
	select {
	case <-c.ended:
		return
	default:
	}
	if !c.out.Push(frame) {
		c.endSlow("send buffer full: client too slow")
	}
}

// endSlow ends a client that cannot keep up, counting it once.
func (c *wsClient) endSlow(reason string) {
	c.slowOnce.Do(func() {
		c.s.counters.slowConsumers.Add(1)
		c.end(websocket.StatusPolicyViolation, reason)
	})
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
		// With the socket in hand the write timeout is its deadline (a
		// context deadline costs coder/websocket a timer per message).
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if corked != nil {
			_ = corked.SetWriteDeadline(time.Now().Add(c.s.opts.ClientWriteTimeout))
			corked.Cork()
		} else {
			ctx, cancel = context.WithTimeout(ctx, c.s.opts.ClientWriteTimeout)
		}
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
		if corked != nil {
			if uerr := corked.Uncork(time.Now().Add(c.s.opts.ClientWriteTimeout)); err == nil {
				err = uerr
			}
		}
		cancel()
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
				c.endSlow("write timeout: client too slow")
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
	s.wsMu.Lock()
	defer s.wsMu.Unlock()
	if s.wsClosed {
		return false
	}
	s.wsClients.Add(1)
	return true
}

func (s *Server) trackWS(c *wsClient, live bool) {
	s.wsMu.Lock()
	defer s.wsMu.Unlock()
	if live {
		s.wsLive[c] = struct{}{}
		if s.wsClosed { // shutdown began while this one was connecting
			c.end(websocket.StatusGoingAway, "gateway shutting down")
		}
	} else {
		delete(s.wsLive, c)
	}
}

// wsGoAway refuses new /ws clients and closes each open one with 1001 as
// soon as its calls are answered.
func (s *Server) wsGoAway() {
	s.wsMu.Lock()
	defer s.wsMu.Unlock()
	s.wsClosed = true
	for c := range s.wsLive {
		c.goAway()
	}
}

// closeWSClients waits until every /ws client has gone away (see wsGoAway)
// or ctx is done; then it closes those left with 1001, cutting their calls,
// and waits for their handlers, which end within closeTimeout (the close
// handshake is bounded and their calls are cancelled).
func (s *Server) closeWSClients(ctx context.Context) {
	s.wsGoAway()
	done := make(chan struct{})
	go func() { s.wsClients.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	s.wsMu.Lock()
	for c := range s.wsLive {
		c.end(websocket.StatusGoingAway, "gateway shutting down")
	}
	s.wsMu.Unlock()
	<-done
}
