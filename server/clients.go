package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/internal/auth"
)

// client is one transport connection to the gateway (a gRPC connection, an
// HTTP connection, and so a /ws client): the unit that the per-client
// limits share out. Every face finds it in its request's context, put
// there by the gRPC stats handler (TagConn) or by http.Server.ConnContext.
// The gateway's own in-memory connection (REST streaming) has none: the
// HTTP connection under it is the client.
type client struct {
	inflight atomic.Int64 // calls and notifications in flight
	// refused counts the RPCs refused on a gRPC connection for want of a
	// valid token; conn is that connection, closed once refused reaches
	// maxRefusedPerConn (nil for HTTP clients and unknown connections).
	refused atomic.Int64
	conn    *trackedConn
	addr    string // the remote address, for the access log

	budgetOnce sync.Once
	budgetOf   *bridge.Budget // see budget
}

// budget is the client's budget of subscriptions and listened methods,
// shared by every stream and session on its connection (made on first
// use: most clients never subscribe). A nil client (the gateway's own
// connection) has none: each of its consumers gets its own.
func (c *client) budget() *bridge.Budget {
	if c == nil {
		return nil
	}
	c.budgetOnce.Do(func() { c.budgetOf = new(bridge.Budget) })
	return c.budgetOf
}

// maxRefusedPerConn is how many RPCs without a valid token one gRPC
// connection may send before the gateway closes it: each costs the
// transport a stream and its headers before the tap handle refuses it,
// and a client that keeps sending them is not one that lost its token.
const maxRefusedPerConn = 64

// refuse counts an RPC refused on c's connection for want of a valid token,
// and closes the connection at maxRefusedPerConn.
func (c *client) refuse() {
	if c == nil || c.conn == nil {
		return
	}
	if c.refused.Add(1) == maxRefusedPerConn {
		_ = c.conn.Close()
	}
}

// connTracker is the gRPC listener, remembering each accepted connection
// by its remote address until it closes, so that TagConn can give a
// client its connection (grpc-go hands stats handlers addresses only).
// With unauthIdle, it also closes each connection that has not
// authenticated an RPC once it has carried no RPC for that long (see
// Options.UnauthenticatedIdle): grpc-go's MaxConnectionIdle would close
// authenticated idle connections too, and nothing closes a connection
// whose header block never ends, which has no stream yet.
type connTracker struct {
	net.Listener
	conns      sync.Map      // remote address -> *trackedConn
	unauthIdle time.Duration // 0: connections may idle unauthenticated
}

func (l *connTracker) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	if l.unauthIdle > 0 {
		tc.idle = time.AfterFunc(l.unauthIdle, tc.closeIfIdle)
	}
	l.conns.Store(c.RemoteAddr().String(), tc)
	return tc, nil
}

type trackedConn struct {
	net.Conn
	l    *connTracker
	once sync.Once

	// The unauthenticated idle timer (nil without one), and what it
	// looks at; guarded by mu.
	mu     sync.Mutex
	idle   *time.Timer
	authed bool // an RPC with a valid token came: the timer is stopped for good
	rpcs   int  // RPCs running
}

// rpcBegin and rpcEnd count the connection's RPCs: it is not idle while
// one runs, and its idle time starts again when the last ends.
func (c *trackedConn) rpcBegin() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.rpcs++
	c.mu.Unlock()
}

func (c *trackedConn) rpcEnd() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rpcs > 0 {
		c.rpcs--
	}
	if c.rpcs == 0 && !c.authed && c.idle != nil {
		c.idle.Reset(c.l.unauthIdle)
	}
}

// authenticated marks the connection as one that sent a valid token.
func (c *trackedConn) authenticated() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.authed && c.idle != nil {
		c.idle.Stop()
	}
	c.authed = true
}

// closeIfIdle is the idle timer's: it closes the connection unless it
// authenticated or an RPC runs (whose end starts the timer again).
func (c *trackedConn) closeIfIdle() {
	c.mu.Lock()
	idle := !c.authed && c.rpcs == 0
	c.mu.Unlock()
	if idle {
		_ = c.Close()
	}
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.conns.Delete(c.RemoteAddr().String())
		c.mu.Lock()
		if c.idle != nil {
			c.idle.Stop()
		}
		c.mu.Unlock()
	})
	return c.Conn.Close()
}

type clientKey struct{}

func clientOf(ctx context.Context) *client {
	c, _ := ctx.Value(clientKey{}).(*client)
	return c
}

// acquire counts one call or notification of c in flight, unless c is at
// its limit (MaxInFlightPerClient, which SetLimits may change: the count
// is kept without a limit too); release undoes it. A nil client (the
// gateway's own connection) has no limit.
func (s *Server) acquire(c *client) error {
	if c == nil {
		return nil
	}
	n := c.inflight.Add(1)
	if max := s.maxInFlightPerClient.Load(); max > 0 && n > max {
		c.inflight.Add(-1)
		s.counters.clientLimited.Add(1)
		return &bridge.Error{Code: bridge.CodeOverloaded, Message: fmt.Sprintf("too many calls in flight from this client (limit %d)", max)}
	}
	return nil
}

func (s *Server) release(c *client) {
	if c != nil {
		c.inflight.Add(-1)
	}
}

// httpConnContext gives each HTTP connection its client.
func (s *Server) httpConnContext(ctx context.Context, conn net.Conn) context.Context {
	return context.WithValue(ctx, clientKey{}, &client{addr: conn.RemoteAddr().String()})
}

// grpcStats is the gRPC server's stats handler: it gives each connection
// its client, counts open connections for the stats, and ends the
// accounting of the RPCs the tap handle admitted without a token.
type grpcStats struct{ s *Server }

type inprocKey struct{}

// TagConn gives a client connection its client; the gateway's own
// in-memory connection is marked instead.
func (g grpcStats) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	if info.LocalAddr != nil && info.LocalAddr.Network() == "bufconn" {
		return context.WithValue(ctx, inprocKey{}, true)
	}
	c := &client{}
	if info.RemoteAddr != nil {
		c.addr = info.RemoteAddr.String()
	}
	if info.RemoteAddr != nil && g.s.grpcConns != nil {
		if conn, ok := g.s.grpcConns.conns.Load(info.RemoteAddr.String()); ok {
			c.conn = conn.(*trackedConn)
		}
	}
	return context.WithValue(ctx, clientKey{}, c)
}

func (g grpcStats) HandleConn(ctx context.Context, st stats.ConnStats) {
	if ctx.Value(inprocKey{}) != nil {
		return
	}
	switch st.(type) {
	case *stats.ConnBegin:
		g.s.counters.activeGRPC.Add(1)
	case *stats.ConnEnd:
		g.s.counters.activeGRPC.Add(-1)
	}
}

func (grpcStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

// HandleRPC counts the RPCs of each connection (see
// trackedConn.rpcBegin), and frees the slot of an RPC admitted without a
// token (see tapAuth) when it ends.
func (g grpcStats) HandleRPC(ctx context.Context, st stats.RPCStats) {
	switch st.(type) {
	case *stats.Begin:
		if c := clientOf(ctx); c != nil {
			c.conn.rpcBegin()
		}
	case *stats.End:
		if c := clientOf(ctx); c != nil {
			c.conn.rpcEnd()
		}
		if slot, ok := ctx.Value(openSlotKey{}).(*openSlot); ok {
			slot.free(g.s)
		}
	}
}

// openSlot is the admission of one RPC to an open service without a token;
// free gives it back once.
type openSlot struct{ once sync.Once }

type openSlotKey struct{}

func (o *openSlot) free(s *Server) {
	o.once.Do(func() { s.openRPCs.Add(-1) })
}

// identity is the token an RPC or connection was authenticated with, kept
// for revocation (see watchRevocation).
type identity struct{ token string }

type identityKey struct{}

func identityOf(ctx context.Context) *identity {
	id, _ := ctx.Value(identityKey{}).(*identity)
	return id
}

// openGRPC reports whether a gRPC method needs no token: health and
// reflection, unless AuthAll.
func (s *Server) openGRPC(fullMethod string) bool {
	if s.opts.Auth == nil {
		return true
	}
	if s.opts.AuthAll {
		return false
	}
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// tapAuth checks credentials when an RPC's headers arrive, before its
// message is read or a goroutine is started for it: an RPC without a valid
// token ends here with UNAUTHENTICATED (its body is never read). An open
// service (health, reflection) is served without a token, but at most
// MaxOpenRPCs such RPCs at once, whatever the number of connections;
// more get RESOURCE_EXHAUSTED.
func (s *Server) tapAuth(ctx context.Context, info *tap.Info) (context.Context, error) {
	if s.opts.Auth == nil {
		return ctx, nil
	}
	if tok, ok := bearer(info.Header); ok {
		if s.opts.Auth.Check(tok) {
			if c := clientOf(ctx); c != nil {
				c.conn.authenticated()
			}
			return context.WithValue(ctx, identityKey{}, &identity{token: tok}), nil
		}
		s.counters.unauthenticated.Add(1)
		clientOf(ctx).refuse()
		return nil, status.Error(codes.Unauthenticated, "invalid bearer token")
	}
	if !s.openGRPC(info.FullMethodName) {
		s.counters.unauthenticated.Add(1)
		clientOf(ctx).refuse()
		return nil, status.Error(codes.Unauthenticated, "missing bearer token")
	}
	if s.openRPCs.Add(1) > int64(s.opts.MaxOpenRPCs) {
		s.openRPCs.Add(-1)
		clientOf(ctx).refuse()
		return nil, status.Errorf(codes.ResourceExhausted, "too many requests without a token at once (limit %d); send a bearer token", s.opts.MaxOpenRPCs)
	}
	return context.WithValue(ctx, openSlotKey{}, &openSlot{}), nil
}

// bearer returns the first bearer token of the metadata; only one is
// looked at, so a request cannot try many.
func bearer(md metadata.MD) (string, bool) {
	vs := md.Get("authorization")
	if len(vs) == 0 {
		return "", false
	}
	return auth.BearerToken(vs[0])
}

// held is a long-lived conversation opened with a token (a /ws client, a
// gRPC stream): revocation ends it (see watchRevocation).
type held struct {
	digest [sha256.Size]byte // of the token: never the token itself in the registry
	token  string
	end    func()
}

// holdToken registers a conversation opened with token, with end to cut it
// when the token is revoked; the returned func unregisters it.
func (s *Server) holdToken(token string, end func()) (unhold func()) {
	h := &held{digest: sha256.Sum256([]byte(token)), token: token, end: end}
	s.heldMu.Lock()
	s.held[h] = struct{}{}
	s.heldMu.Unlock()
	return func() {
		s.heldMu.Lock()
		delete(s.held, h)
		s.heldMu.Unlock()
	}
}

// watchRevocation checks, every RevocationCheck, the tokens of the
// conversations that are open, and ends those whose token is no longer
// accepted (the token file changed, emptied or disappeared): a /ws client
// with 1008, a gRPC stream with UNAUTHENTICATED. It returns when ctx ends.
func (s *Server) watchRevocation(ctx context.Context) {
	t := time.NewTicker(s.opts.RevocationCheck)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		s.heldMu.Lock()
		all := make([]*held, 0, len(s.held))
		for h := range s.held {
			all = append(all, h)
		}
		s.heldMu.Unlock()
		verdict := map[[sha256.Size]byte]bool{}
		for _, h := range all {
			ok, seen := verdict[h.digest]
			if !seen {
				ok = s.opts.Auth.Check(h.token)
				verdict[h.digest] = ok
			}
			if !ok {
				// Ended once, counted once: the conversation takes a
				// moment to end, and the next check must not count it
				// again.
				s.heldMu.Lock()
				_, still := s.held[h]
				delete(s.held, h)
				s.heldMu.Unlock()
				if still {
					s.counters.revoked.Add(1)
					h.end()
				}
			}
		}
	}
}

// errRevoked is the cause of a gRPC stream ended by revocation.
var errRevoked = errors.New("the bearer token this stream was opened with is no longer accepted")

var _ = http.StatusOK
