package backend

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

const (
	defaultReadLimit = 16 << 20

	// writeTimeout bounds one frame write. A client that stops reading for
	// this long is cut off rather than left to pin its goroutines.
	writeTimeout = 10 * time.Second

	// outQueue is how many frames may wait for a connection's writer. Ticks
	// are dropped, never waited for, when it is full, so one slow client
	// cannot hold up the others' ticks.
	outQueue = 32

	// shutdownHTTPTimeout bounds how long Serve waits for plain HTTP
	// requests (not yet upgraded) to finish before cutting them off.
	shutdownHTTPTimeout = 5 * time.Second
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// Tick, when > 0, makes the Server send a `tick` notification to every
	// connected client every Tick.
	Tick time.Duration
	// ReadLimit is the largest message read from a client, in bytes;
	// 0 means 16 MiB. A client that sends more is disconnected with status
	// 1009 (message too big).
	ReadLimit int64
	// Logger receives connection events; nil discards them.
	Logger *slog.Logger
}

// Server is the demo JSON-RPC 2.0 backend. Create it with New; it is safe
// for concurrent use.
type Server struct {
	// Static after New.
	tick      time.Duration
	readLimit int64
	log       *slog.Logger
	// sleep waits for `sleep`; the fuzzer swaps in one that returns at once.
	sleep func(context.Context, time.Duration) error
	// ctx is the parent of every connection's context; cancel is called
	// once, by the first shutdown.
	ctx    context.Context
	cancel context.CancelFunc

	requests atomic.Uint64 // requests and notifications received
	ticks    atomic.Uint64 // ticks sent, i.e. the last seq

	// handlers counts ServeHTTP calls in flight. Add happens under mu while
	// closing is false, so it never races with shutdown's Wait.
	handlers sync.WaitGroup

	mu sync.Mutex // guards the fields below
	// closing is set by the first shutdown; ServeHTTP then refuses.
	closing bool
	conns   map[*conn]struct{}
	// stopTicker stops the ticker goroutine and waits for it; non-nil while
	// it runs. The ticker runs only while someone is connected, so that
	// seq 1 is the first tick anyone can see.
	stopTicker func()
}

// New returns a Server that is ready to serve.
func New(opts Options) *Server {
	s := &Server{
		tick:      opts.Tick,
		readLimit: opts.ReadLimit,
		log:       opts.Logger,
		sleep:     sleepCtx,
		conns:     make(map[*conn]struct{}),
	}
	if s.readLimit <= 0 {
		s.readLimit = defaultReadLimit
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Requests returns the number of requests and notifications this Server has
// received so far, batch elements included. Elements that are not valid
// requests (answered with -32600) are not counted; unknown methods are.
func (s *Server) Requests() uint64 { return s.requests.Load() }

// ServeHTTP serves JSON-RPC on any path. A WebSocket upgrade is accepted
// and served until the connection or the Server closes; a POST with a JSON
// body is answered in the response (see servePost). It returns only after
// every goroutine it started for the request has exited.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		http.Error(w, "backend is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer s.handlers.Done()

	if r.Method == http.MethodPost && !isWebSocketUpgrade(r) {
		s.servePost(w, r)
		return
	}
	// Anything else is meant to be a handshake; Accept answers those that
	// are not (426 Upgrade Required, 405 for other methods).
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		// Accept has already written an HTTP error.
		s.log.Debug("websocket accept failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	s.serveConn(ws, r.RemoteAddr)
}

// Serve serves HTTP (and so WebSockets) on ln until ctx is done or ln fails,
// then shuts the Server down: it stops accepting, closes every connection
// with status 1001 (going away), connections from ServeHTTP included, and
// returns once every goroutine it started has exited. It returns nil on a
// clean shutdown, or the error that made the listener fail. ln is closed on
// return.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()

	var err error
	select {
	case <-ctx.Done():
	case err = <-served:
		served = nil // already received
	}

	// Say goodbye to the WebSockets first: from here on ServeHTTP refuses,
	// so once hs stops accepting nothing new can turn up.
	s.beginShutdown()
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownHTTPTimeout)
	defer cancel()
	if herr := hs.Shutdown(hctx); herr != nil {
		s.log.Warn("http shutdown timed out, closing", "err", herr)
		_ = hs.Close()
	}
	if served != nil {
		if serr := <-served; !errors.Is(serr, http.ErrServerClosed) {
			err = serr
		}
	}
	// hs does not track hijacked connections; handlers does.
	s.handlers.Wait()
	return err
}

// Shutdown closes every connection with status 1001 (going away), makes
// ServeHTTP refuse new ones, and waits until every goroutine the Server
// started has exited. If ctx ends first it returns ctx.Err(); the goroutines
// still exit, bounded by the WebSocket close handshake's own timeouts.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginShutdown()
	done := make(chan struct{})
	go func() {
		s.handlers.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// beginShutdown is the half of Shutdown that does not wait.
func (s *Server) beginShutdown() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	s.cancel()
}

// enter registers a ServeHTTP call, unless the Server is shutting down.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.handlers.Add(1)
	return true
}

func (s *Server) addConn(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns[c] = struct{}{}
	if s.tick > 0 && s.stopTicker == nil && !s.closing {
		ctx, cancel := context.WithCancel(s.ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.runTicker(ctx)
		}()
		s.stopTicker = func() {
			cancel()
			<-done
		}
	}
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	var stop func()
	if len(s.conns) == 0 {
		stop, s.stopTicker = s.stopTicker, nil
	}
	s.mu.Unlock()
	// Outside mu: the ticker takes mu to reach the connections.
	if stop != nil {
		stop()
	}
}

// runTicker sends a tick to every connection every s.tick until ctx ends.
func (s *Server) runTicker(ctx context.Context) {
	t := time.NewTicker(s.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			msg := tickMessage(s.ticks.Add(1), now)
			s.mu.Lock()
			for c := range s.conns {
				if !c.trySend(msg) {
					c.log.Debug("tick dropped: writer busy")
				}
			}
			s.mu.Unlock()
		}
	}
}

// conn is one accepted WebSocket. serveConn owns it and the goroutines
// below: a reader, a writer, and one goroutine per frame being executed.
type conn struct {
	// Static after construction.
	s   *Server
	ws  *websocket.Conn
	log *slog.Logger
	// ctx ends when the connection is going away, because the peer left or
	// the Server is shutting down. Calls in flight stop, and nothing more is
	// written.
	ctx context.Context

	// out carries whole frames (replies and ticks) to the writer, the only
	// goroutine that writes to ws.
	out chan []byte

	subs subscriptions // demo_subscribe's subscriptions
}

// serveConn serves ws until the peer leaves or the Server shuts down, and
// returns after every goroutine it started has exited.
func (s *Server) serveConn(ws *websocket.Conn, remote string) {
	ws.SetReadLimit(s.readLimit)
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	c := &conn{
		s:   s,
		ws:  ws,
		log: s.log.With("remote", remote),
		ctx: ctx,
		out: make(chan []byte, outQueue),
	}
	c.log.Debug("connection open")
	s.addConn(c)
	defer s.removeConn(c)

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	// frames counts frame goroutines. Only the reader adds to it, and it is
	// waited for only after the reader has returned.
	var frames sync.WaitGroup
	readDone := make(chan error, 1)
	go func() { readDone <- c.readLoop(&frames) }()

	var err error
	select {
	case err = <-readDone:
		// The peer left or broke the protocol: nobody to answer any more.
		cancel()
		frames.Wait()
		c.subs.wg.Wait()
		<-writerDone
		_ = ws.CloseNow()
	case <-s.ctx.Done():
		// Stop the calls first so that sleeps end and nothing more is
		// queued, then close with a handshake. The reader sees the peer's
		// close frame and returns.
		cancel()
		if cerr := ws.Close(websocket.StatusGoingAway, "backend shutting down"); cerr != nil {
			c.log.Debug("close handshake failed", "err", cerr)
		}
		err = <-readDone
		frames.Wait()
		c.subs.wg.Wait()
		<-writerDone
	}
	c.log.Debug("connection closed", "err", err)
}

// readLoop reads frames and starts a goroutine, counted in frames, to execute
// each. It returns the error that ended the connection.
func (c *conn) readLoop(frames *sync.WaitGroup) error {
	for {
		// Not c.ctx: coder/websocket drops the TCP connection when a read's
		// context ends, and shutdown wants a close handshake instead. The
		// read ends when ws closes, which serveConn guarantees.
		typ, data, err := c.ws.Read(context.Background())
		if err != nil {
			return err
		}
		var m message
		if typ == websocket.MessageText {
			// Parsed here, in arrival order, so that requests are
			// counted in the order the client sent them.
			m = c.s.parse(data)
		} else {
			m = message{err: errParse("binary frames are not supported; send JSON in text frames")}
		}
		frames.Add(1)
		go func() {
			defer frames.Done()
			after := &afterSend{}
			ctx := context.WithValue(context.WithValue(c.ctx, connKey, c), afterSendKey, after)
			if reply := c.s.execute(ctx, m); reply != nil {
				c.send(reply)
			}
			after.run()
		}()
	}
}

// send queues a frame for the writer, giving up when the connection is going
// away.
func (c *conn) send(frame []byte) {
	select {
	case c.out <- frame:
	case <-c.ctx.Done():
	}
}

// trySend queues a frame unless the queue is full or the connection is going
// away.
func (c *conn) trySend(frame []byte) bool {
	if c.ctx.Err() != nil {
		return false
	}
	select {
	case c.out <- frame:
		return true
	default:
		return false
	}
}

// writeLoop writes queued frames until the connection is going away.
func (c *conn) writeLoop() {
	for {
		select {
		case <-c.ctx.Done():
			return
		case frame := <-c.out:
			if c.ctx.Err() != nil {
				return // select picks at random; going away wins
			}
			if err := c.write(frame); err != nil {
				c.log.Debug("write failed", "err", err)
				// Wake the reader so that serveConn tears down.
				_ = c.ws.CloseNow()
				return
			}
		}
	}
}

func (c *conn) write(frame []byte) error {
	// Not c.ctx: a write's context ending makes coder/websocket drop the
	// connection, and shutdown wants to close it itself, with 1001.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), writeTimeout)
	defer cancel()
	return c.ws.Write(ctx, websocket.MessageText, frame)
}
