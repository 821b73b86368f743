package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/internal/cork"
)

// slot is one backend connection position of the pool: it dials, serves the
// connection until it breaks, and redials. Its run loop is the only
// goroutine that dials or tears down connections for the slot.
type slot struct {
	// Static after newSlot.
	b   *Bridge
	be  *backend // the backend this slot connects to
	idx int      // the slot's index among all the Bridge's slots
	// kick asks the run loop to dial (lazy mode). Buffered: a kick is never
	// lost and never blocks the caller.
	kick chan struct{}

	mu sync.Mutex
	// Guarded by mu.
	state      State
	current    *conn         // set while StateConnected
	changed    chan struct{} // closed and replaced on every state change
	lastErr    error         // the last dial error (as clients may see it)
	lastErrAt  time.Time     // when lastErr happened
	dialFailed bool          // the last dial failed: the slot is not ready
	nextDial   time.Time     // when the backoff ends, for StateBackoff
	closedErr  *Error        // set once the Bridge is closing

	// published mirrors state for readers that must not take mu.
	published atomic.Int32
}

func newSlot(b *Bridge, be *backend, idx int) *slot {
	return &slot{b: b, be: be, idx: idx, kick: make(chan struct{}, 1), changed: make(chan struct{})}
}

// setState changes the state and wakes every waiter. s.mu must be held.
// Options.OnStateChange runs later, on its own goroutine.
func (s *slot) setState(st State) {
	s.state = st
	s.published.Store(int32(st))
	close(s.changed)
	s.changed = make(chan struct{})
	s.b.stateChange()
}

// failing reports whether the slot's last dial failed (and none has
// succeeded since).
func (s *slot) failing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dialFailed && s.state != StateConnected
}

// connectivity is the slot's state as a gRPC channel's: ready while
// connected; connecting during a dial that follows no failure; transient
// failure from a failed dial until a dial succeeds (backing off, or
// redialling); idle with no connection and no failure known; shutdown
// once the Bridge is closing.
func (s *slot) connectivity() Connectivity {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closedErr != nil:
		return ConnShutdown
	case s.state == StateConnected:
		return ConnReady
	case s.dialFailed:
		return ConnTransientFailure
	case s.state == StateConnecting:
		return ConnConnecting
	}
	return ConnIdle
}

// kickDial asks a lazy slot to dial if it is disconnected; it does not wait.
func (s *slot) kickDial() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == StateDisconnected {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// openConn returns the open connection, or nil when the slot has none.
func (s *slot) openConn() *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != StateConnected {
		return nil
	}
	return s.current
}

// currentState reads the state without s.mu.
func (s *slot) currentState() State { return State(s.published.Load()) }

// slotSnapshot is what Stats reads of a slot.
type slotSnapshot struct {
	state     State
	conn      *conn
	lastErr   error
	lastErrAt time.Time
}

func (s *slot) snapshot() slotSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slotSnapshot{s.state, s.current, s.lastErr, s.lastErrAt}
}

// conn returns the open connection, dialling or waiting for a dial as
// needed. While the slot backs off after a failed dial it fails fast with
// CodeUnavailable, unless waitForReady.
func (s *slot) conn(ctx context.Context, waitForReady bool) (*conn, error) {
	sawDial := false // this caller waited through a dial: it waits for no second one
	for {
		s.mu.Lock()
		if s.closedErr != nil {
			s.mu.Unlock()
			return nil, s.closedErr
		}
		switch s.state {
		case StateConnected:
			c := s.current
			s.mu.Unlock()
			return c, nil
		case StateDisconnected:
			select {
			case s.kick <- struct{}{}:
			default:
			}
		case StateConnecting:
			sawDial = true
		case StateBackoff:
			// Fail fast while the backoff runs, or when the dial this caller
			// waited for failed. Once the backoff is over the redial is
			// imminent, and a newcomer waits for it.
			if !waitForReady && (sawDial || time.Now().Before(s.nextDial)) {
				err := newError(CodeUnavailable,
					fmt.Sprintf("backend unavailable (next dial in %v)", time.Until(s.nextDial).Round(time.Millisecond)),
					s.lastErr)
				s.mu.Unlock()
				return nil, err
			}
		}
		changed := s.changed
		s.mu.Unlock()

		select {
		case <-changed:
		case <-ctx.Done():
			return nil, s.b.abortError(s.b.ctxCode(ctx))
		}
	}
}

// run dials, serves and redials until ctx is done. It owns the slot's
// connections: each one's goroutines have exited when serve returns.
//
// Backoff follows gRPC: failed dials wait Backoff.Delay(failures) before the
// next one, and the count resets only once a connection has stayed up for
// Backoff.Base, so a backend that accepts and at once drops the connection
// is not redialled in a tight loop.
func (s *slot) run(ctx context.Context) {
	b, be := s.b, s.be
	log := b.opts.Logger.With("conn", s.idx)
	failures := 0
	lost := false      // a connection of this slot has been open and was lost
	redialNow := false // the backend went away on purpose: dial its replacement at once
	defer func() {
		s.close()
		if be.retired.Load() && !b.closing.Load() {
			// A reload removed the backend: what was on this slot moves,
			// as for a connection lost (listening, too, with none left).
			b.hub.connLost(s.idx, errRetired)
		}
	}()
	for {
		// A lazy slot dials when a caller asks (kick), or at once while a
		// listener or subscription waits for notifications on it: such
		// demand makes no call that would kick. After a failed dial it
		// redials in the background (after its backoff) until a dial
		// succeeds: what the backend's state and readiness say must become
		// true again without traffic to try it.
		if !b.opts.Eager && !redialNow && !s.failing() && !b.hub.wantsConn(s.idx) {
			select {
			case <-s.kick:
			case <-ctx.Done():
				return
			}
		}
		s.mu.Lock()
		s.setState(StateConnecting)
		// Callers kick only while the state is disconnected, under mu; a
		// kick left over from before this dial must not cause another.
		select {
		case <-s.kick:
		default:
		}
		s.mu.Unlock()

		redialNow = false
		c, err := s.dial(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			b.counters.dialFailures.Add(1)
			be.counters.dialFailures.Add(1)
			be.transportFailure(err)
			if !s.backoff(ctx, failures, err, true, log) {
				return
			}
			continue
		}

		b.counters.connects.Add(1)
		be.counters.connects.Add(1)
		if lost {
			b.counters.reconnects.Add(1)
			be.counters.reconnects.Add(1)
		}
		be.transportSuccess()
		log.Info("backend connected", "url", be.redactedURL)
		s.mu.Lock()
		s.current = c
		s.dialFailed = false
		s.setState(StateConnected)
		s.mu.Unlock()

		up := time.Now()
		cause := c.serve(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(cause, errIdle) {
			// Nothing used it: it reopens on the next call.
			be.counters.idleCloses.Add(1)
			log.Info("backend connection closed after being idle", "url", be.redactedURL, "idle", b.opts.IdleTimeout)
			continue
		}
		lost = true
		switch websocket.CloseStatus(cause) {
		case websocket.StatusGoingAway, websocket.StatusServiceRestart:
			// The backend is going away on purpose (shutdown, restart):
			// dial its replacement at once, and do not hold it against it.
			log.Info("backend is going away; dialling its replacement", "url", be.redactedURL, "err", cause)
			b.hub.connLost(s.idx, cause)
			failures, redialNow = 0, true
			continue
		}
		be.transportFailure(cause)
		log.Warn("backend connection lost", "url", be.redactedURL, "err", cause)
		b.hub.connLost(s.idx, cause)
		if time.Since(up) >= b.opts.Backoff.Base {
			failures = 0
			continue
		}
		// It dropped as soon as it opened: count it as a failed dial.
		failures++
		if !s.backoff(ctx, failures, fmt.Errorf("connection dropped after %v: %w", time.Since(up).Round(time.Millisecond), cause), false, log) {
			return
		}
	}
}

// backoff puts the slot in StateBackoff for the delay after failures
// consecutive failures, then back to StateDisconnected. dialFailed marks a
// failed dial (the slot is not ready until a dial succeeds). It reports
// false when ctx ended first.
func (s *slot) backoff(ctx context.Context, failures int, cause error, dialFailed bool, log *slog.Logger) bool {
	b := s.b
	delay := b.opts.Backoff.Delay(failures, jitterRand)
	log.Warn("backend unavailable; backing off", "url", s.be.redactedURL, "err", cause, "failures", failures, "retry_in", delay)
	s.mu.Lock()
	s.lastErr = cause
	s.lastErrAt = time.Now()
	if dialFailed {
		s.dialFailed = true
	}
	s.nextDial = time.Now().Add(delay)
	s.setState(StateBackoff)
	s.mu.Unlock()
	if !sleepCtx(ctx, delay) {
		return false
	}
	s.mu.Lock()
	s.setState(StateDisconnected)
	s.mu.Unlock()
	return true
}

// sleepCtx waits for d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// markLost takes c out of service at once: new calls stop using it and wait
// for the next dial.
func (s *slot) markLost(c *conn) {
	s.mu.Lock()
	if s.current == c {
		s.current = nil
		s.setState(StateDisconnected)
	}
	s.mu.Unlock()
}

// close makes every later call on the slot fail: the Bridge is closing,
// or a reload removed the backend (then the call is routed again).
func (s *slot) close() {
	s.mu.Lock()
	s.closedErr = newError(CodeDraining, "gateway is shutting down", nil)
	if s.be.retired.Load() && !s.b.closing.Load() {
		s.closedErr = retiredError()
	}
	s.current = nil
	s.setState(StateDisconnected)
	s.mu.Unlock()
}

func (s *slot) dial(ctx context.Context) (*conn, error) {
	b := s.b
	ctx, cancel := context.WithTimeout(ctx, b.opts.DialTimeout)
	defer cancel()
	be := s.be
	client, raw := capturingClient(be.opts.HTTPClient)
	ws, resp, err := websocket.Dial(ctx, be.opts.URL, &websocket.DialOptions{
		HTTPClient: client,
		HTTPHeader: be.opts.Header,
	})
	// A handshake that was refused (a redirect, a 401) may leave its
	// connection idle in the transport, which this dial copied: close it.
	client.CloseIdleConnections()
	if err != nil {
		// Clients see this error: it names the backend by DisplayURL only.
		err = hideURL(err, be.opts.URL, be.displayURL)
		if resp != nil {
			return nil, fmt.Errorf("dial %s: handshake refused with HTTP %d: %w", be.displayURL, resp.StatusCode, err)
		}
		return nil, fmt.Errorf("dial %s: %w", be.displayURL, err)
	}
	return newConn(s, ws, raw()), nil
}

// capturingClient returns a copy of client whose transport remembers the
// network connection it dials (wrapped so that the writer can cork it), so
// that shutdown can cut a close handshake short with a silent backend. Clients with another kind of transport are
// used as they are (raw then returns nil).
func capturingClient(client *http.Client) (*http.Client, func() net.Conn) {
	noRedirects := *client
	noRedirects.CheckRedirect = refuseRedirect
	client = &noRedirects
	tr, ok := client.Transport.(*http.Transport)
	if client.Transport == nil {
		tr, ok = http.DefaultTransport.(*http.Transport)
	}
	if !ok {
		return client, func() net.Conn { return nil }
	}
	var mu sync.Mutex
	var raw net.Conn
	tr = tr.Clone()
	dial := tr.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cc := cork.Wrap(c)
		mu.Lock()
		raw = cc
		mu.Unlock()
		return cc, nil
	}
	copied := *client
	copied.Transport = tr
	return &copied, func() net.Conn {
		mu.Lock()
		defer mu.Unlock()
		return raw
	}
}

// refuseRedirect fails a backend handshake that is redirected: a redirect
// could take the handshake, and the headers configured for the backend
// (--backend-header credentials), to another host or from wss:// to plain
// http://. The error names where it pointed (scheme, host and port).
func refuseRedirect(req *http.Request, _ []*http.Request) error {
	return fmt.Errorf("the backend redirected the handshake to %s://%s; redirects are not followed (give the final URL as the backend)", req.URL.Scheme, req.URL.Host)
}

// scrubbedError hides the backend URL in an error's text (net/http quotes
// the request URL, path and query included) but keeps the chain.
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// hideURL replaces every spelling of the backend URL raw in err's text by
// display, and any credentials left (a query, userinfo) by "REDACTED".
func hideURL(err error, raw, display string) error {
	u, perr := url.Parse(raw)
	if perr != nil {
		return err
	}
	msg := err.Error()
	var ue *url.Error
	if errors.As(err, &ue) && ue.URL != "" {
		msg = strings.ReplaceAll(msg, strconv.Quote(ue.URL), display)
		msg = strings.ReplaceAll(msg, ue.URL, display)
	}
	msg = strings.ReplaceAll(msg, raw, display)
	if u.RawQuery != "" {
		msg = strings.ReplaceAll(msg, u.RawQuery, "REDACTED")
	}
	if u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			msg = strings.ReplaceAll(msg, p, "REDACTED")
		}
		if name := u.User.Username(); name != "" {
			msg = strings.ReplaceAll(msg, name, "REDACTED")
		}
	}
	if msg == err.Error() {
		return err
	}
	return &scrubbedError{msg: msg, err: err}
}
