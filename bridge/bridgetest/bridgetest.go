// Package bridgetest provides a scripted JSON-RPC 2.0 WebSocket backend for
// tests: it runs on loopback, counts what it accepts, and lets a test read
// what the gateway sent and answer (or not) frame by frame.
package bridgetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// HandlerFunc serves one accepted backend connection. The connection is
// closed when it returns.
type HandlerFunc func(ctx context.Context, c *Conn)

// Server is a fake backend on 127.0.0.1 (or, from NewPipeServer, on
// in-memory connections). Stop and Start simulate the backend going down
// and coming back on the same address.
type Server struct {
	t       testing.TB
	handler HandlerFunc
	pipe    bool // serve on a pipeListener instead of loopback TCP

	// Conns receives every accepted connection, in order.
	Conns chan *Conn

	accepted atomic.Int64
	frames   atomic.Int64 // frames received from the gateway, all connections
	noPong   atomic.Bool
	// open and maxLive count open connections, for "never more backend
	// connections than configured".
	open, maxLive atomic.Int64

	mu       sync.Mutex
	addr     string         // guarded by mu: fixed at the first Start
	gate     chan struct{}  // guarded by mu: when non-nil, handshakes wait for it to close
	srv      *http.Server   // guarded by mu: nil while stopped
	ln       net.Listener   // guarded by mu
	live     map[*Conn]bool // guarded by mu
	handlers sync.WaitGroup
}

// NewServer starts a fake backend that runs handler (Echo if nil) for every
// connection. It is stopped by t.Cleanup.
func NewServer(t testing.TB, handler HandlerFunc) *Server {
	t.Helper()
	if handler == nil {
		handler = Echo
	}
	s := &Server{t: t, handler: handler, Conns: make(chan *Conn, 4096), live: map[*Conn]bool{}}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// NewPipeServer is NewServer on in-memory connections (net.Pipe) instead
// of loopback TCP, for tests in a testing/synctest bubble: there, time
// moves only while every goroutine is blocked on something of the
// bubble's own, which a pipe is and a socket is not. Call it inside the
// bubble, and dial it with the client from HTTPClient.
func NewPipeServer(t testing.TB, handler HandlerFunc) *Server {
	t.Helper()
	if handler == nil {
		handler = Echo
	}
	s := &Server{t: t, handler: handler, pipe: true, Conns: make(chan *Conn, 4096), live: map[*Conn]bool{}, addr: "pipe.invalid:80"}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// HTTPClient returns a client that dials the server: for a pipe server
// (NewPipeServer) a client whose every connection is a pipe to it (refused
// while the server is stopped), otherwise http.DefaultClient.
func (s *Server) HTTPClient() *http.Client {
	if !s.pipe {
		return http.DefaultClient
	}
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			s.mu.Lock()
			ln, _ := s.ln.(*pipeListener)
			s.mu.Unlock()
			if ln == nil {
				return nil, errors.New("connection refused (pipe server stopped)")
			}
			return ln.dial(ctx)
		},
	}}
}

// URL returns the ws:// URL of the server.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "ws://" + s.addr + "/"
}

// Addr returns host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Accepted returns the number of WebSocket handshakes completed.
func (s *Server) Accepted() int64 { return s.accepted.Load() }

// MaxLive returns the most connections that were open at once.
func (s *Server) MaxLive() int64 { return s.maxLive.Load() }

// Frames returns the number of frames received from the gateway.
func (s *Server) Frames() int64 { return s.frames.Load() }

// SetNoPong makes the server ignore pings (no pong is sent), as a
// blackholed or frozen backend would.
func (s *Server) SetNoPong(v bool) { s.noPong.Store(v) }

// HoldHandshakes makes new handshakes wait until ReleaseHandshakes.
func (s *Server) HoldHandshakes() {
	s.mu.Lock()
	s.gate = make(chan struct{})
	s.mu.Unlock()
}

// ReleaseHandshakes lets held handshakes proceed.
func (s *Server) ReleaseHandshakes() {
	s.mu.Lock()
	if s.gate != nil {
		close(s.gate)
		s.gate = nil
	}
	s.mu.Unlock()
}

// Start listens (again) on the server's address; the first Start picks a
// free port.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("already started")
	}
	var ln net.Listener
	if s.pipe {
		ln = newPipeListener()
	} else {
		addr := s.addr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return err
		}
		s.addr = ln.Addr().String()
	}
	s.ln = ln
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serveHTTP)}
	srv := s.srv
	s.handlers.Go(func() { _ = srv.Serve(ln) })
	return nil
}

// Stop closes the listener and kills every connection (no close frame, as
// if the process died), then waits for the handlers to return.
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	if s.pipe {
		s.ln = nil // dials are refused from now on
	}
	live := make([]*Conn, 0, len(s.live))
	for c := range s.live {
		live = append(live, c)
	}
	if s.gate != nil {
		close(s.gate)
		s.gate = nil
	}
	s.mu.Unlock()
	if srv == nil {
		return
	}
	_ = srv.Close()
	for _, c := range live {
		c.Kill()
	}
	s.handlers.Wait()
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		OnPingReceived: func(context.Context, []byte) bool { return !s.noPong.Load() },
	})
	if err != nil {
		return
	}
	ws.SetReadLimit(-1)
	ctx, cancel := context.WithCancel(context.Background())
	c := &Conn{ws: ws, srv: s, ctx: ctx, cancel: cancel, Header: r.Header.Clone()}
	s.mu.Lock()
	if s.srv == nil { // stopped while the handshake ran
		s.mu.Unlock()
		c.Kill()
		return
	}
	s.live[c] = true
	s.handlers.Add(1)
	s.mu.Unlock()
	s.accepted.Add(1)
	n := s.open.Add(1)
	for {
		m := s.maxLive.Load()
		if n <= m || s.maxLive.CompareAndSwap(m, n) {
			break
		}
	}
	defer s.open.Add(-1)
	s.Conns <- c
	defer s.handlers.Done()
	defer func() {
		s.mu.Lock()
		delete(s.live, c)
		s.mu.Unlock()
		c.Kill()
	}()
	s.handler(ctx, c)
}

// Conn is one accepted backend connection.
type Conn struct {
	ws     *websocket.Conn
	srv    *Server
	ctx    context.Context
	cancel context.CancelFunc
	// Header is the handshake request's header.
	Header http.Header

	writeMu sync.Mutex
}

// Request is a message the gateway sent.
type Request struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params,omitempty"`
	Raw     []byte          `json:"-"`
}

// Done is closed when the connection is killed or its handler returned.
func (c *Conn) Done() <-chan struct{} { return c.ctx.Done() }

// ReadRaw returns the next frame from the gateway.
func (c *Conn) ReadRaw(ctx context.Context) ([]byte, error) {
	_, b, err := c.ws.Read(ctx)
	if err == nil {
		c.srv.frames.Add(1)
	}
	return b, err
}

// Read returns the next frame from the gateway, decoded as one message.
func (c *Conn) Read(ctx context.Context) (*Request, error) {
	b, err := c.ReadRaw(ctx)
	if err != nil {
		return nil, err
	}
	var r Request
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("gateway sent %q: %w", b, err)
	}
	r.Raw = b
	return &r, nil
}

// WriteRaw sends one text frame.
func (c *Conn) WriteRaw(ctx context.Context, frame string) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.ws.Write(ctx, websocket.MessageText, []byte(frame))
}

// WriteBinary sends one binary frame.
func (c *Conn) WriteBinary(ctx context.Context, frame []byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.ws.Write(ctx, websocket.MessageBinary, frame)
}

// Reply sends a result for id.
func (c *Conn) Reply(ctx context.Context, id json.RawMessage, result any) error {
	b, err := json.Marshal(result)
	if err != nil {
		return err
	}
	return c.WriteRaw(ctx, `{"jsonrpc":"2.0","id":`+string(id)+`,"result":`+string(b)+`}`)
}

// Kill closes the TCP connection without a close frame.
func (c *Conn) Kill() {
	c.cancel()
	_ = c.ws.CloseNow()
}

// Close sends a close frame with code and waits for the handshake.
func (c *Conn) Close(code websocket.StatusCode, reason string) error {
	defer c.cancel()
	return c.ws.Close(code, reason)
}

// Echo answers every request with its params as the result (null when
// absent). Methods with special meaning:
//   - "hold": never answered.
//   - "sleep": answered after params[0] (or params.ms) milliseconds, or never
//     if the connection dies first.
//
// Notifications get no answer.
func Echo(ctx context.Context, c *Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		r, err := c.Read(ctx)
		if err != nil {
			return
		}
		if r.ID == nil {
			continue
		}
		switch r.Method {
		case "hold":
		case "sleep":
			d := sleepParam(r.Params)
			wg.Go(func() {
				t := time.NewTimer(d)
				defer t.Stop()
				select {
				case <-t.C:
					_ = c.Reply(ctx, r.ID, json.RawMessage(orNull(r.Params)))
				case <-ctx.Done():
				}
			})
		default:
			if err := c.Reply(ctx, r.ID, json.RawMessage(orNull(r.Params))); err != nil {
				return
			}
		}
	}
}

func orNull(p json.RawMessage) json.RawMessage {
	if len(p) == 0 {
		return json.RawMessage("null")
	}
	return p
}

func sleepParam(p json.RawMessage) time.Duration {
	var arr []float64
	if json.Unmarshal(p, &arr) == nil && len(arr) > 0 {
		return time.Duration(arr[0] * float64(time.Millisecond))
	}
	var obj struct{ MS float64 }
	_ = json.Unmarshal(p, &obj)
	return time.Duration(obj.MS * float64(time.Millisecond))
}

// IDNumber returns a gateway-assigned numeric id.
func IDNumber(id json.RawMessage) uint64 {
	n, _ := strconv.ParseUint(string(id), 10, 64)
	return n
}

// Eventually polls cond every millisecond until it holds, and fails the
// test if 10 s pass first: for state with no event to wait on.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Forward is a handler that answers nothing and sends every request it
// reads to got, for a test to look at (a nil got: the requests are only
// read).
func Forward(got chan<- *Request) HandlerFunc {
	return func(ctx context.Context, c *Conn) {
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			if got != nil {
				got <- r
			}
		}
	}
}

// pipeListener is a net.Listener whose connections are net.Pipe ends.
type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

func (l *pipeListener) dial(ctx context.Context) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.closed:
		return nil, errors.New("connection refused (pipe server stopped)")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe.invalid:80" }

// Frame is one thing a scripted backend sends (see Respond): a text
// message, a binary message, or, with Close set, a close frame with that
// status and CloseReason. A text message need not be JSON, UTF-8 or
// complete: the backend sends what it is told.
type Frame struct {
	Text        string
	Binary      []byte
	Close       websocket.StatusCode
	CloseReason string
}

// Text returns a text frame.
func Text(s string) Frame { return Frame{Text: s} }

// Respond is a handler that sends, for each message the gateway sends
// (requests and notifications alike, in order), the frames script returns
// for it; nothing for an empty list. script runs on the connection's
// reader, so it may keep state across messages to answer out of order:
// return nothing for one request and its reply with a later one's. A
// Close frame ends the connection.
func Respond(script func(r *Request) []Frame) HandlerFunc {
	return func(ctx context.Context, c *Conn) {
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			for _, f := range script(r) {
				switch {
				case f.Close != 0:
					_ = c.Close(f.Close, f.CloseReason)
					return
				case f.Binary != nil:
					err = c.WriteBinary(ctx, f.Binary)
				default:
					err = c.WriteRaw(ctx, f.Text)
				}
				if err != nil {
					return
				}
			}
		}
	}
}
