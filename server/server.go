package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/test/bufconn"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/cork"
	"github.com/wsbridge/wsbridge/internal/defaults"
	"github.com/wsbridge/wsbridge/typed"
)

// Options configure a Server. Zero values mean the defaults given.
type Options struct {
	// GRPCAddr is the gRPC listen address. Default 127.0.0.1:9090.
	GRPCAddr string
	// HTTPAddr is the REST and /__stats listen address. Default 127.0.0.1:8080.
	HTTPAddr string
	// Bridge configures the backend link. Bridge.URL is required.
	Bridge bridge.Options
	// DescriptorSets are descriptor set files (`buf build -o`, `protoc
	// --include_imports --descriptor_set_out`) whose services carry the
	// wsbridge.v1 mapping options: each is served as a typed API on gRPC,
	// and on REST (its google.api.http rules), Connect and gRPC-Web.
	DescriptorSets []string
	// TracerProvider, if set, traces every call on every face and its
	// backend round trip (OpenTelemetry); nil: no tracing, at no cost.
	TracerProvider trace.TracerProvider
	// Propagator reads the incoming trace context (gRPC metadata, HTTP
	// headers). Default: W3C Trace Context and Baggage.
	Propagator propagation.TextMapPropagator
	// AccessLog, if set, gets one line per finished client call (see
	// accesslog.go), at AccessLogLevel; AccessLogSample (0 to 1; 0 means
	// 1) is the share of successful calls logged. Nil: no access log.
	AccessLog       *slog.Logger
	AccessLogLevel  slog.Level
	AccessLogSample float64
	// AdminAddr, if set, is the address of the admin listener: /metrics,
	// /healthz, /readyz, /livez, /__stats, /v1/stats, /v1/stats:watch and
	// the dashboard move there from the HTTP listener, with AdminHandler at
	// /debug/. It asks for no token: give it a private address.
	AdminAddr string
	// AdminHandler serves /debug/ on the admin listener (pprof).
	AdminHandler http.Handler
	// HTTPRules is a gRPC API configuration YAML file (as grpc-gateway's)
	// with HTTP rules for the typed services, besides those in their
	// descriptors.
	HTTPRules string
	// ShutdownGrace bounds the drain of calls in flight at shutdown.
	// Default 10 s.
	ShutdownGrace time.Duration
	// ShutdownDelay is how long the server keeps serving, with readiness
	// NOT_SERVING, before it stops taking calls at shutdown: time for load
	// balancers and Kubernetes endpoints to take it out of rotation.
	// Default 0 (Kubernetes users may set a preStop sleep instead).
	ShutdownDelay time.Duration
	// ConnDrain bounds, at shutdown, the time HTTP keep-alive connections
	// get to carry one more request (answered with "Connection: close")
	// before the idle ones are closed. Closing an idle connection races a
	// request a client or proxy pool is sending on it, which then fails
	// (nginx does not resend a POST); a connection that has just answered
	// with Connection: close has no such race. Default 1 s.
	ConnDrain time.Duration
	// ClientPingInterval is the time between pings to each /ws client.
	// Default 30 s.
	ClientPingInterval time.Duration
	// ClientWriteTimeout bounds one write (or a pong) to a /ws client; a
	// client that stops reading is closed with 1008. Default 10 s.
	ClientWriteTimeout time.Duration
	// ClientBuffer is how many messages may wait for each /ws client,
	// Subscribe stream or Session, and ClientBufferBytes how many bytes of
	// them; past either the consumer is ended as too slow. Defaults 1024
	// and 16 MiB.
	ClientBuffer      int
	ClientBufferBytes int64
	// Auth, if set, checks bearer tokens: every client face then requires
	// "Authorization: Bearer <token>" (gRPC metadata, REST, /rpc; /ws also
	// takes the subprotocol "bearer.<token>"). Health (gRPC health,
	// /healthz) and reflection stay open unless AuthAll.
	Auth Authenticator
	// AuthAll extends Auth to health and reflection.
	AuthAll bool
	// AllowedHosts are the host names (patterns, * any text) that HTTP
	// requests may name in their Host header; others get 421. Empty: on a
	// loopback listener loopback names only (localhost, 127.0.0.1, ::1),
	// which DNS rebinding cannot forge; on any other listener every name.
	AllowedHosts []string
	// WSOrigins are the host patterns of browser origins allowed on /ws
	// (as coder/websocket's AcceptOptions.OriginPatterns). Empty: the same
	// host only.
	WSOrigins []string
	// TLS, if set, serves both listeners over TLS (1.2 at least).
	TLS *tls.Config
	// TLSNotAfter, if set, tells when the served certificate expires (it
	// may change as the certificate is renewed): the metric
	// wsbridge_tls_cert_not_after_seconds.
	TLSNotAfter func() time.Time
	// ReadHeaderTimeout bounds reading a request's headers (slowloris).
	// Default 10 s.
	ReadHeaderTimeout time.Duration
	// MaxHeaderBytes bounds the headers of one request on every listener:
	// the gRPC header list (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE; a header
	// block that grows past it, CONTINUATION after CONTINUATION, closes the
	// connection), and the HTTP listeners' request headers (431 past it)
	// and HTTP/2 header list. The HPACK tables stay at HTTP/2's 4 KiB.
	// Default 64 KiB.
	MaxHeaderBytes int
	// MaxClients caps concurrent /ws clients; more get 503 at the
	// handshake. 0: no cap.
	MaxClients int
	// MaxInFlightPerClient caps the calls and notifications one client
	// (a /ws connection, a /rpc request, a Session) may have in flight, so
	// that one client cannot starve the rest; more get -32012 /
	// RESOURCE_EXHAUSTED. 0: no cap.
	MaxInFlightPerClient int
	// MaxBatch caps the elements of one JSON-RPC batch (/ws, /rpc); a
	// larger batch is refused whole with -32600. Default 1000.
	MaxBatch int
	// MaxOpenRPCs caps the RPCs to open services (health, reflection)
	// served at once without a token when Auth is set, whatever the number
	// of connections; more get RESOURCE_EXHAUSTED. Default 16.
	MaxOpenRPCs int
	// MaxStreamsPerConn caps the concurrent streams of one gRPC connection
	// (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; a client queues the rest).
	// Default 1024.
	MaxStreamsPerConn int
	// UnauthenticatedIdle, with Auth, closes a gRPC connection that has
	// not authenticated an RPC once it has carried no RPC for this long:
	// a bare connection, one whose header block never ends, one whose
	// RPCs were all refused. One serving a tokenless RPC (health,
	// reflection; at most MaxOpenRPCs at once) stays while it runs; an
	// authenticated connection is never closed for idling. Default 10 s.
	UnauthenticatedIdle time.Duration
	// RevocationCheck is how often the tokens of open /ws clients and gRPC
	// streams are checked again (Auth set): one whose token is no longer
	// accepted is ended. Default 1 s.
	RevocationCheck time.Duration
	// MetricsMethods are the method names that may appear as a label in
	// /metrics; calls to any other method are labelled "other", so that no
	// client-supplied string becomes a label.
	MetricsMethods []string
	// Version and Commit label wsbridge_build_info in /metrics (the
	// binary's, stamped at build time). Empty: "unknown".
	Version, Commit string
	// Logger receives the server's events. Default: discard.
	Logger *slog.Logger
}

// Authenticator checks a bearer token.
type Authenticator interface {
	Check(token string) bool
}

func (o Options) withDefaults() Options {
	if o.AccessLogSample <= 0 || o.AccessLogSample > 1 {
		o.AccessLogSample = 1
	}
	if o.GRPCAddr == "" {
		o.GRPCAddr = "127.0.0.1:9090"
	}
	if o.HTTPAddr == "" {
		o.HTTPAddr = "127.0.0.1:8080"
	}
	defaults.Positive(&o.ShutdownGrace, 10*time.Second)
	defaults.Positive(&o.ConnDrain, time.Second)
	defaults.Positive(&o.ClientPingInterval, 30*time.Second)
	defaults.Positive(&o.ClientWriteTimeout, 10*time.Second)
	defaults.Positive(&o.ClientBuffer, 1024)
	defaults.Positive(&o.ClientBufferBytes, 16<<20)
	defaults.Positive(&o.MaxOpenRPCs, 16)
	defaults.Positive(&o.MaxStreamsPerConn, 1024)
	defaults.Positive(&o.RevocationCheck, time.Second)
	defaults.Positive(&o.UnauthenticatedIdle, 10*time.Second)
	defaults.Positive(&o.MaxBatch, 1000)
	defaults.Positive(&o.ReadHeaderTimeout, 10*time.Second)
	defaults.Positive(&o.MaxHeaderBytes, 64<<10)
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Bridge.Logger == nil {
		o.Bridge.Logger = o.Logger
	}
	return o
}

// Server is a running set of client faces over one Bridge. New opens the
// listeners; Run serves until its context is done, then shuts down.
type Server struct {
	// Static after New.
	opts     Options
	log      *slog.Logger
	bridge   *bridge.Bridge
	counters *counters
	health   *health.Server
	grpc     *grpc.Server
	http     *http.Server
	grpcLn   net.Listener
	httpLn   net.Listener
	typed    *typed.API // nil without Options.DescriptorSets
	// typedStreams holds the full method names of the typed
	// server-streaming rpcs.
	typedStreams map[string]bool
	tracer       trace.Tracer // nil without Options.TracerProvider
	adminLn      net.Listener
	adminHTTP    *http.Server
	admin        *opsRoutes // the routes the admin listener serves; nil without AdminAddr

	// The limits SetLimits may change: Options.MaxInFlightPerClient and
	// MaxClients.
	maxInFlightPerClient, maxClients atomic.Int64

	// streamsCtx is cancelled at shutdown to end streaming RPCs.
	streamsCtx context.Context
	endStreams context.CancelFunc

	// inproc is an in-memory listener of the gRPC server, for the REST
	// gateway's streaming routes (grpc-gateway cannot stream in-process);
	// inprocConn is the gateway's client connection over it.
	inproc     *bufconn.Listener
	inprocConn *grpc.ClientConn

	// Sessions that shutdown tells to go away (/ws clients, gRPC
	// Sessions), with how to end each at once; sessClosed is set once
	// shutdown has told them. Both guarded by sessMu. wsClients counts
	// the /ws handlers.
	sessMu     sync.Mutex
	sessions   map[*session]func()
	sessClosed bool
	wsClients  sync.WaitGroup
	// wsReserved counts /ws handshakes under way or served, for MaxClients.
	wsReserved atomic.Int64

	// bridgeRef is bridge for the state notifier, which may run before New
	// has assigned bridge.
	bridgeRef atomic.Pointer[bridge.Bridge]

	draining atomic.Bool // set at shutdown: readiness stays NOT_SERVING
	stopping atomic.Bool // set when shutdown stops taking connections (after ShutdownDelay)
	refusing atomic.Bool // set when shutdown starts refusing calls

	// loopbackOnly is set when the HTTP listener is on a loopback
	// address (see hostAllowed).
	loopbackOnly bool
	// grpcConns is grpcLn, which remembers its connections (see
	// client.refuse).
	grpcConns *connTracker
	// openRPCs counts the RPCs served without a token (see tapAuth).
	openRPCs atomic.Int64
	// held are the conversations opened with a token, for revocation;
	// guarded by heldMu.
	heldMu sync.Mutex
	held   map[*held]struct{}

	runOnce sync.Once
}

// LivenessService is the gRPC health service name that reports the process
// alive (SERVING until shutdown) whatever the backend does; "" and
// wsbridge.v1.BridgeService report readiness: NOT_SERVING from a failed
// backend dial until a dial succeeds (bridge.Bridge.Ready), and while
// shutting down. A lazy gateway that has not dialled yet is ready.
const LivenessService = "liveness"

// setReadiness publishes the bridge's readiness as the health status. It
// runs on the bridge's state notifier (never under a bridge lock) and once
// after New has the bridge.
func (s *Server) setReadiness() {
	b := s.bridgeRef.Load()
	if b == nil || s.draining.Load() {
		return // the bridge is not assigned yet: New calls again
	}
	status := healthpb.HealthCheckResponse_SERVING
	if !b.Ready() {
		status = healthpb.HealthCheckResponse_NOT_SERVING
	}
	for _, name := range []string{"", wsbridgev1.BridgeService_ServiceDesc.ServiceName} {
		s.health.SetServingStatus(name, status)
	}
}

// New creates the Bridge and opens both listeners. The caller must call Run,
// which releases everything when it returns.
func New(opts Options) (*Server, error) {
	opts = opts.withDefaults()
	s := &Server{opts: opts, log: opts.Logger, counters: newCounters(), sessions: map[*session]func(){}, held: map[*held]struct{}{}}
	s.maxInFlightPerClient.Store(int64(opts.MaxInFlightPerClient))
	s.maxClients.Store(int64(opts.MaxClients))
	s.counters.metrics = newMetrics(s, opts)
	if opts.TLSNotAfter != nil {
		s.counters.metrics.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wsbridge_tls_cert_not_after_seconds",
			Help: "When the certificate the listeners serve expires (Unix time); it follows the renewed files.",
		}, func() float64 { return float64(opts.TLSNotAfter().Unix()) }))
	}
	if opts.TracerProvider != nil {
		s.tracer = opts.TracerProvider.Tracer(tracerName)
		if opts.Bridge.TracerProvider == nil {
			opts.Bridge.TracerProvider = opts.TracerProvider
		}
	}
	s.streamsCtx, s.endStreams = context.WithCancel(context.Background())

	// Readiness follows the backend link; health exists before the Bridge
	// so that the first state change finds it.
	s.health = health.NewServer()
	userHook := opts.Bridge.OnStateChange
	opts.Bridge.OnStateChange = func(st bridge.State) {
		s.setReadiness()
		if userHook != nil {
			userHook(st)
		}
	}
	// Each request written to a backend feeds its metrics.
	userRequestHook := opts.Bridge.OnBackendRequest
	opts.Bridge.OnBackendRequest = func(backend string, took time.Duration, err error) {
		s.counters.metrics.backendRequest(backend, took, err)
		if userRequestHook != nil {
			userRequestHook(backend, took, err)
		}
	}
	b, err := bridge.New(opts.Bridge)
	if err != nil {
		return nil, err
	}
	s.bridge = b
	s.counters.metrics.addBackends(b.Stats().Backends)

	grpcLn, err := net.Listen("tcp", opts.GRPCAddr)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("gRPC listener: %w", err)
	}
	s.grpcConns = &connTracker{Listener: grpcLn}
	if opts.Auth != nil {
		s.grpcConns.unauthIdle = opts.UnauthenticatedIdle
	}
	s.grpcLn = s.grpcConns
	s.httpLn, err = net.Listen("tcp", opts.HTTPAddr)
	if err != nil {
		b.Close()
		s.grpcLn.Close()
		return nil, fmt.Errorf("HTTP listener: %w", err)
	}
	if tcp, ok := s.httpLn.Addr().(*net.TCPAddr); ok {
		s.loopbackOnly = tcp.IP.IsLoopback()
	}
	if opts.AdminAddr != "" {
		if s.adminLn, err = net.Listen("tcp", opts.AdminAddr); err != nil {
			b.Close()
			s.grpcLn.Close()
			s.httpLn.Close()
			return nil, fmt.Errorf("admin listener: %w", err)
		}
	}
	if opts.Auth != nil && opts.TLS == nil && !(isLoopback(s.grpcLn.Addr()) && s.loopbackOnly) {
		s.log.Warn("bearer tokens are accepted without TLS on a non-loopback address: they cross the network in the clear (give --tls-cert and --tls-key, or terminate TLS in front)",
			"grpc", s.grpcLn.Addr().String(), "http", s.httpLn.Addr().String())
	}
	// /ws writers cork their connections to batch writes.
	s.httpLn = cork.Listener{Listener: s.httpLn}
	var grpcTLS []grpc.ServerOption
	if opts.TLS != nil {
		cfg := opts.TLS.Clone()
		if cfg.MinVersion < tls.VersionTLS12 {
			cfg.MinVersion = tls.VersionTLS12
		}
		if cfg.CipherSuites == nil {
			cfg.CipherSuites = AEADCipherSuites // TLS 1.3 suites are not configurable, and all AEAD
		}
		grpcTLS = append(grpcTLS, grpc.Creds(credentials.NewTLS(cfg)))
		httpCfg := cfg.Clone()
		httpCfg.NextProtos = []string{"h2", "http/1.1"}
		s.httpLn = tls.NewListener(s.httpLn, httpCfg)
	}

	s.grpc = grpc.NewServer(append(append(grpcTLS, s.grpcTracing()...),
		// Credentials are checked as an RPC's headers arrive, before its
		// message is read (see tapAuth).
		grpc.InTapHandle(s.tapAuth),
		grpc.StatsHandler(grpcStats{s}),
		grpc.ChainStreamInterceptor(s.streamInterceptor),
		grpc.MaxRecvMsgSize(int(b.MaxMessageBytes())),
		grpc.MaxConcurrentStreams(uint32(opts.MaxStreamsPerConn)),
		// grpc-go's default (16 MiB) lets a header block that never ends
		// hold that much of each connection before any token is checked.
		grpc.MaxHeaderListSize(uint32(opts.MaxHeaderBytes)),
		// Reused workers keep their grown stacks: a goroutine per call would
		// grow a fresh stack through the bridge's call path every time.
		grpc.NumStreamWorkers(256),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second}),
	)...)
	wsbridgev1.RegisterBridgeServiceServer(s.grpc, bridgeService{s: s})
	wsbridgev1.RegisterStatsServiceServer(s.grpc, statsService{s: s})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	s.health.SetServingStatus(LivenessService, healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(wsbridgev1.StatsService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.bridgeRef.Store(b)
	s.setReadiness()
	// fail undoes what New has started when a later step fails.
	fail := func(err error) (*Server, error) {
		s.grpc.Stop() // its stream workers started with it
		b.Close()
		s.grpcLn.Close()
		s.httpLn.Close()
		if s.adminLn != nil {
			s.adminLn.Close()
		}
		if s.inprocConn != nil {
			s.inprocConn.Close()
		}
		return nil, err
	}
	if s.typed, err = s.loadTyped(); err != nil {
		return fail(err)
	}
	s.registerReflection(s.typed)

	s.inproc = bufconn.Listen(1 << 20)
	s.inprocConn, err = grpc.NewClient("passthrough:///wsbridge-inproc",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return s.inproc.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fail(err)
	}
	handler, err := s.httpHandler()
	if err != nil {
		return fail(err)
	}
	s.http = &http.Server{
		Handler:           s.closeWhenStopping(s.httpTracing(handler)),
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		MaxHeaderBytes:    opts.MaxHeaderBytes,
		HTTP2:             http2Limits(),
		// Bounds reading a request body; /ws clears it after the upgrade.
		ReadTimeout: time.Minute,
		IdleTimeout: 2 * time.Minute,
		ConnState:   s.trackHTTPConn,
		ConnContext: s.httpConnContext,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// http2Limits are the HTTP listeners' HTTP/2 bounds besides the header
// list (MaxHeaderBytes): HPACK tables of HTTP/2's default 4 KiB, whatever
// a client asks.
func http2Limits() *http.HTTP2Config {
	return &http.HTTP2Config{MaxDecoderHeaderTableSize: 4096, MaxEncoderHeaderTableSize: 4096}
}

// AEADCipherSuites are the TLS 1.2 cipher suites the listeners offer:
// ECDHE with an AEAD only (no CBC, no RSA key exchange). TLS 1.3 suites
// are all AEAD and not configurable.
var AEADCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

func isLoopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// GRPCAddr returns the gRPC listener's address.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLn.Addr() }

// HTTPAddr returns the HTTP listener's address.
func (s *Server) HTTPAddr() net.Addr { return s.httpLn.Addr() }

// Bridge returns the server's Bridge.
func (s *Server) Bridge() *bridge.Bridge { return s.bridge }

// Limits are the limits a reload may change (see Options).
type Limits struct {
	MaxInFlight          int // Options.Bridge.MaxInFlight
	MaxInFlightPerClient int
	MaxClients           int
}

// SetLimits applies new limits to the calls and /ws clients that come
// from now on (a reload); what is under way stays.
func (s *Server) SetLimits(l Limits) {
	s.bridge.SetMaxInFlight(l.MaxInFlight)
	s.maxInFlightPerClient.Store(int64(l.MaxInFlightPerClient))
	s.maxClients.Store(int64(l.MaxClients))
}

// SetBackends replaces the backends (a reload, see
// bridge.Bridge.SetBackends); a new backend's metric series start at
// zero, as at start.
func (s *Server) SetBackends(backends []bridge.BackendOptions) (bridge.BackendChanges, error) {
	ch, err := s.bridge.SetBackends(backends)
	if err == nil && len(ch.Added) > 0 {
		s.counters.metrics.addBackends(s.bridge.Stats().Backends)
	}
	return ch, err
}

// Run serves until ctx is done, then shuts down: health turns NOT_SERVING;
// after ShutdownDelay the listeners close, gRPC clients get GOAWAY, /ws
// clients are closed with 1001 as soon as their calls are answered, and
// new calls are refused with UNAVAILABLE; calls in flight drain for up to
// ShutdownGrace; then the backend connection is closed with 1001. It
// returns nil after a clean shutdown. Call it once.
func (s *Server) Run(ctx context.Context) error {
	err := errors.New("server: Run called twice")
	s.runOnce.Do(func() { err = s.run(ctx) })
	return err
}

// AdminAddr returns the admin listener's address (nil without
// Options.AdminAddr).
func (s *Server) AdminAddr() net.Addr {
	if s.adminLn == nil {
		return nil
	}
	return s.adminLn.Addr()
}

func (s *Server) run(ctx context.Context) error {
	attrs := []any{"grpc", s.grpcLn.Addr().String(), "http", s.httpLn.Addr().String(), "backend", s.bridge.LogURL()}
	if s.adminLn != nil {
		attrs = append(attrs, "admin", s.adminLn.Addr().String())
	}
	s.log.Info("wsbridge listening", attrs...)

	serveErr := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.grpc.Serve(s.grpcLn); err != nil {
			serveErr <- fmt.Errorf("gRPC server: %w", err)
		}
	})
	wg.Go(func() { _ = s.grpc.Serve(s.inproc) })
	revCtx, stopRevocation := context.WithCancel(context.Background())
	if s.opts.Auth != nil {
		wg.Go(func() { s.watchRevocation(revCtx) })
	}
	if s.adminLn != nil {
		s.adminHTTP = s.adminServer()
		wg.Go(func() {
			if err := s.adminHTTP.Serve(s.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("admin server: %w", err)
			}
		})
	}
	wg.Go(func() {
		err := s.http.Serve(s.httpLn)
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !(s.stopping.Load() && errors.Is(err, net.ErrClosed)) {
			serveErr <- fmt.Errorf("HTTP server: %w", err)
		}
	})

	var runErr error
	select {
	case <-ctx.Done():
		s.log.Info("shutting down", "grace", s.opts.ShutdownGrace)
	case runErr = <-serveErr:
		s.log.Error("server failed; shutting down", "err", runErr)
	}
	s.shutdown()
	stopRevocation()
	wg.Wait()
	return runErr
}

// shutdown drains and stops everything, bounded by ShutdownGrace (after
// ShutdownDelay). It stops taking work at the connection level first, so
// that load balancers and clients move to another replica without a failed
// call: the listeners close (a refused connection is UNAVAILABLE to gRPC
// clients, and nginx or Envoy retry it on another upstream), gRPC
// connections get GOAWAY (clients start new streams elsewhere), HTTP
// keep-alive connections close after their next reply, and each /ws client
// is closed with 1001 once its calls are answered, so that a call without a
// reply at a 1001 was never passed to the backend. Calls arriving on those
// connections meanwhile are served. Only then are calls still arriving
// refused with UNAVAILABLE (reason "draining": never started), and calls
// in flight drain.
func (s *Server) shutdown() {
	s.draining.Store(true)
	s.health.Shutdown() // every service NOT_SERVING
	if d := s.opts.ShutdownDelay; d > 0 {
		s.log.Info("serving on for the shutdown delay", "delay", d)
		<-time.After(d)
	}
	graceCtx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownGrace)
	defer cancel()

	// No new connections; open ones are told to go.
	s.stopping.Store(true)
	grpcDone := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(grpcDone) }()
	_ = s.httpLn.Close()
	s.sessionsGoAway()
	s.waitHTTPConns(graceCtx, s.opts.ConnDrain)

	// Calls still arriving are refused; calls in flight drain. Streams
	// that carry no calls (Subscribe, WatchStats, health Watch) end now,
	// with UNAVAILABLE (reason draining).
	s.refusing.Store(true)
	s.bridge.BeginDrain()
	s.endStreams()
	httpDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownGrace+finishTimeout)
		defer cancel()
		httpDone <- s.http.Shutdown(ctx)
	}()
	if err := s.bridge.Drain(graceCtx); err != nil {
		s.log.Warn("grace period over with calls in flight; they fail with UNAVAILABLE", "in_flight", s.bridge.Stats().InFlight)
	}
	// The calls left fail now, each with UNAVAILABLE and its reason
	// (reply_lost if its request was written, draining if not), and their
	// handlers get finishTimeout to send that: no caller is left with a
	// bare transport error. Sessions end once their replies are out.
	s.bridge.Close()
	finishCtx, cancelFinish := context.WithTimeout(context.Background(), finishTimeout)
	defer cancelFinish()
	s.closeSessions(finishCtx)

	select {
	case <-grpcDone:
	case <-finishCtx.Done():
		s.grpc.Stop()
		<-grpcDone
	}
	if err := <-httpDone; err != nil {
		_ = s.http.Close()
	}
	_ = s.inprocConn.Close()
	if s.adminHTTP != nil {
		// Last: probes and scrapes saw the drain to its end.
		_ = s.adminHTTP.Close()
	}
	s.log.Info("shutdown complete")
}

// finishTimeout bounds, after the grace period, the time handlers get to
// send the UNAVAILABLE their calls ended with.
const finishTimeout = time.Second

// closeWhenStopping answers with "Connection: close" once shutdown stops
// taking connections, so that keep-alive clients go elsewhere after this
// reply.
func (s *Server) closeWhenStopping(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.stopping.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}

// waitHTTPConns waits until no HTTP connection is open (WebSocket clients
// are not counted: they were hijacked), for at most limit or until ctx is
// done.
func (s *Server) waitHTTPConns(ctx context.Context, limit time.Duration) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for s.counters.activeHTTP.Load() > 0 {
		select {
		case <-tick.C:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// streamInterceptor opens every gRPC stream as a stream (see openStream):
// one opened with a token that is then revoked ends with UNAUTHENTICATED;
// the streams that carry no calls (Subscribe, WatchStats, health Watch,
// typed server streams) end at the start of a shutdown's drain with
// UNAVAILABLE (reason draining), while a Session, which carries calls,
// goes away once they are answered (see session.goAway); and each is
// observed when it ends.
func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, end := context.WithCancelCause(ss.Context())
	defer end(nil)
	f, kind := faceGRPC, streamQuiet
	switch {
	case info.FullMethod == wsbridgev1.BridgeService_Session_FullMethodName:
		f, kind = faceSession, streamCalls
	case info.FullMethod == wsbridgev1.BridgeService_Subscribe_FullMethodName:
		kind = streamNotifications
	case s.typedStreams[info.FullMethod]:
		f, kind = typedFaceOf(ctx), streamNotifications
	}
	st := s.openStream(ctx, f, info.FullMethod, kind, end)
	err := handler(srv, &serverStream{ServerStream: ss, ctx: ctx, st: st})
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errRevoked), errors.Is(cause, errDrained) && ss.Context().Err() == nil:
		err = streamStatus(cause) // ended by revocation or the drain, not by the client
	}
	st.close(err)
	return err
}

// serverStream is a gRPC stream with its stream's context, counting the
// messages it sends.
type serverStream struct {
	grpc.ServerStream
	ctx context.Context
	st  *stream
}

func (ss *serverStream) Context() context.Context { return ss.ctx }

func (ss *serverStream) SendMsg(m any) error {
	err := ss.ServerStream.SendMsg(m)
	if err == nil {
		ss.st.sent()
	}
	return err
}

// trackHTTPConn counts open HTTP connections for Stats.active_clients.
func (s *Server) trackHTTPConn(_ net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		s.counters.activeHTTP.Add(1)
	case http.StateClosed, http.StateHijacked:
		s.counters.activeHTTP.Add(-1)
	}
}

// newGatewayMux returns grpc-gateway's mux with wsbridge's options.
func (s *Server) newGatewayMux() *runtime.ServeMux {
	return runtime.NewServeMux(
		runtime.WithIncomingHeaderMatcher(func(key string) (string, bool) {
			if http.CanonicalHeaderKey(key) == http.CanonicalHeaderKey(WaitForReadyMetadata) {
				return WaitForReadyMetadata, true
			}
			return runtime.DefaultHeaderMatcher(key)
		}),
		runtime.WithErrorHandler(bodyLimitErrorHandler),
	)
}
