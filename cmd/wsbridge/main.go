// Command wsbridge is the gateway: `wsbridge serve` runs it (with an
// embedded demo backend when no --backend is given) and `wsbridge backend`
// runs the demo backend alone. It reads flags and the environment, builds
// options, and hands them to the libraries; nothing else lives here.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wsbridge/wsbridge/backend"
	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/internal/auth"
	"github.com/wsbridge/wsbridge/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

const usage = `Usage: wsbridge <command> [flags]

Commands:
  serve     run the gateway (gRPC, REST, /ws, /rpc); without --backend it
            starts an embedded demo backend
  stats     show a running gateway's counters (--json, --watch)
  call      make one call through a running gateway: call METHOD [PARAMS_JSON]
  backend   run the demo JSON-RPC WebSocket backend alone
  version   print the version, commit and Go version

Run 'wsbridge <command> --help' for a command's flags.
`

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stdout, stderr, getenv)
	case "stats":
		return statsCmd(ctx, args[1:], stdout, stderr, getenv)
	case "call":
		return callCmd(ctx, args[1:], stdout, stderr, getenv)
	case "backend":
		return runBackend(ctx, args[1:], stderr, getenv)
	case "version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "wsbridge: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// version and commit are set at build time (make build passes them with
// -ldflags -X); otherwise the module's build information is used.
var version, commit string

func versionString() string {
	v, rev, goVersion := version, commit, runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if rev == "" && s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("wsbridge %s\ncommit %s\n%s", v, rev, goVersion)
}

type logFlags struct{ format, level string }

func (l *logFlags) register(fs *flagSet) {
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", l.format)
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := newFlagSet("serve", stderr, getenv)
	var (
		opts     server.Options
		bo       = &opts.Bridge
		backendU string
		headers  repeated
		tick     time.Duration
		logs     logFlags
	)
	fs.StringVar(&backendU, "backend", "", "backend WebSocket URL (ws:// or wss://); empty starts the embedded demo backend")
	fs.StringVar(&opts.GRPCAddr, "grpc-addr", "127.0.0.1:9090", "gRPC listen address")
	fs.StringVar(&opts.HTTPAddr, "http-addr", "127.0.0.1:8080", "HTTP listen address (REST, /__stats)")
	fs.BoolVar(&bo.Eager, "backend-eager", false, "dial the backend at start and redial in the background after a loss")
	fs.IntVar(&bo.Conns, "backend-conns", 1, "backend connections, used round-robin")
	fs.Var(&headers, "backend-header", "a header for the backend handshake, as `\"Name: value\"` (repeatable)")
	fs.DurationVar(&bo.DialTimeout, "backend-dial-timeout", 5*time.Second, "bound on one backend dial, handshake included")
	fs.DurationVar(&bo.Backoff.Base, "backoff-base", time.Second, "redial delay after the first failed dial")
	fs.Float64Var(&bo.Backoff.Multiplier, "backoff-multiplier", 1.6, "redial delay growth per failed dial")
	fs.Float64Var(&bo.Backoff.Jitter, "backoff-jitter", 0.2, "redial delay jitter, as a fraction (negative for none)")
	fs.DurationVar(&bo.Backoff.Max, "backoff-max", 120*time.Second, "longest redial delay")
	fs.DurationVar(&bo.PingInterval, "backend-ping-interval", 15*time.Second, "WebSocket ping interval on the backend link (negative disables)")
	fs.DurationVar(&bo.PingTimeout, "backend-ping-timeout", 5*time.Second, "a pong later than this means the backend link is lost")
	fs.DurationVar(&bo.WriteTimeout, "backend-write-timeout", 10*time.Second, "bound on one write to the backend")
	fs.DurationVar(&bo.CallTimeout, "call-timeout", 30*time.Second, "longest any call may take")
	fs.IntVar(&bo.MaxInFlight, "max-inflight", 10000, "most calls in flight at once; more get RESOURCE_EXHAUSTED")
	fs.Int64Var(&bo.MaxMessageBytes, "max-message-bytes", 4<<20, "largest message to or from the backend, and largest request body")
	fs.DurationVar(&opts.ShutdownGrace, "shutdown-grace", 10*time.Second, "how long calls in flight may drain at shutdown")
	fs.DurationVar(&opts.ShutdownDelay, "shutdown-delay", 0, "at shutdown, keep serving this long with readiness NOT_SERVING before refusing calls (time for load balancers to notice)")
	fs.DurationVar(&opts.ClientPingInterval, "client-ping-interval", 30*time.Second, "WebSocket ping interval to /ws clients")
	fs.DurationVar(&opts.ClientWriteTimeout, "client-write-timeout", 10*time.Second, "a /ws client that takes longer to accept a write is closed with 1008")
	fs.IntVar(&opts.ClientBuffer, "client-buffer", 1024, "messages that may wait for one /ws client, Subscribe stream or Session before it is ended as too slow")
	subMethods := commaList{"*_subscribe"}
	unsubMethods := commaList{"*_unsubscribe"}
	fs.Var(&subMethods, "subscribe-methods", "comma-separated patterns (* = any text) of methods that create a backend subscription")
	fs.Var(&unsubMethods, "unsubscribe-methods", "comma-separated patterns of the methods that undo them, paired by position")
	fs.BoolVar(&bo.Batch, "backend-batch", false, "send requests queued together as one JSON-RPC batch (for backends that handle batches; a batch's replies wait for its slowest call)")
	fs.BoolVar(&bo.Resubscribe, "resubscribe", false, "re-issue live subscriptions after a backend reconnect (subscribers get a wsbridge_gap notification)")
	fs.StringVar(&bo.CancelMethod, "cancel-method", "", "notification sent to the backend with {\"id\": <gateway id>} when a caller gives up (e.g. $/cancelRequest)")
	fs.DurationVar(&tick, "demo-tick", 0, "embedded demo backend: send a tick notification this often (0: never)")
	var (
		tokenFile, tlsCert, tlsKey, backendCA string
		backendInsecure, errorData            bool
		allow, deny, origins                  commaList
	)
	fs.StringVar(&tokenFile, "auth-token-file", "", "file of accepted bearer tokens, one per line (reread when it changes); enables authentication on every client face")
	fs.BoolVar(&opts.AuthAll, "auth-all", false, "require the token for health checks and reflection too")
	fs.Var(&allow, "allow-methods", "comma-separated method patterns clients may call (* = any text); empty allows all")
	fs.Var(&deny, "deny-methods", "comma-separated method patterns clients may not call")
	fs.Var(&origins, "ws-origins", "comma-separated host patterns of browser origins allowed on /ws; empty: same host only")
	fs.StringVar(&tlsCert, "tls-cert", "", "certificate (PEM) for the gateway's listeners; with --tls-key serves TLS 1.2+")
	fs.StringVar(&tlsKey, "tls-key", "", "private key (PEM) for --tls-cert")
	fs.StringVar(&backendCA, "backend-ca", "", "extra CA certificates (PEM) trusted for a wss:// backend, besides the system roots")
	fs.BoolVar(&backendInsecure, "backend-insecure", false, "do not verify the wss:// backend's certificate (insecure; logged as a warning)")
	fs.BoolVar(&errorData, "backend-error-data", true, "pass the data member of backend errors on to clients")
	fs.IntVar(&opts.MaxClients, "max-clients", 0, "most concurrent /ws clients; more get 503 at the handshake (0: no limit)")
	fs.IntVar(&opts.MaxInFlightPerClient, "max-inflight-per-client", 0, "most calls one /ws client or Session may have in flight (0: no limit)")
	var metricsMethods commaList
	fs.Var(&metricsMethods, "metrics-methods", "comma-separated method names that may appear as a label in /metrics (others are \"other\")")
	var debugAddr string
	var printConfig bool
	fs.StringVar(&debugAddr, "debug-addr", "", "serve net/http/pprof on this address (keep it private; off when empty)")
	fs.BoolVar(&printConfig, "print-config", false, "print the effective configuration (secrets redacted) as a config file, and exit")
	fs.withConfig()
	logs.register(fs)
	if err := fs.parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if printConfig {
		out, err := fs.effective(redactSetting)
		if err != nil {
			fmt.Fprintln(stderr, "serve:", err)
			return 1
		}
		_, _ = stdout.Write(out)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "serve: unexpected arguments %q\n", fs.Args())
		return 2
	}
	log, err := logs.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "serve:", err)
		return 2
	}
	opts.Logger = log
	if bo.Header, err = parseHeaders(headers.values); err != nil {
		fmt.Fprintln(stderr, "serve: --backend-header:", err)
		return 2
	}

	var demo *embeddedBackend
	if backendU == "" {
		demo, err = startEmbeddedBackend(backend.Options{Tick: tick, Logger: log.With("component", "demo-backend")})
		if err != nil {
			log.Error("cannot start the embedded demo backend", "err", err)
			return 1
		}
		defer demo.stop()
		backendU = demo.url
		log.Info("no --backend given: started the embedded demo backend", "url", backendU)
	}
	bo.URL = backendU
	bo.SubscribeMethods, bo.UnsubscribeMethods = []string(subMethods), []string(unsubMethods)

	bo.AllowMethods, bo.DenyMethods, opts.WSOrigins = allow, deny, origins
	opts.MetricsMethods = metricsMethods
	bo.DropErrorData = !errorData
	if tokenFile != "" {
		tokens, err := auth.Load(tokenFile)
		if err != nil {
			log.Error("cannot load --auth-token-file", "err", err)
			return 1
		}
		opts.Auth = tokens
	}
	if (tlsCert == "") != (tlsKey == "") {
		fmt.Fprintln(stderr, "serve: --tls-cert and --tls-key go together")
		return 2
	}
	if tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
		if err != nil {
			log.Error("cannot load the TLS certificate", "err", err)
			return 1
		}
		opts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if backendCA != "" || backendInsecure {
		client, err := backendClient(backendCA, backendInsecure)
		if err != nil {
			log.Error("backend TLS settings", "err", err)
			return 1
		}
		if backendInsecure {
			log.Warn("--backend-insecure: the backend's certificate is not verified; anyone on the path can impersonate it")
		}
		bo.HTTPClient = client
	}

	if debugAddr != "" {
		stopDebug, err := serveDebug(debugAddr)
		if err != nil {
			log.Error("cannot listen on --debug-addr", "err", err)
			return 1
		}
		defer stopDebug()
		log.Info("pprof listening", "addr", debugAddr)
	}

	srv, err := server.New(opts)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := srv.Run(ctx); err != nil {
		log.Error("stopped with an error", "err", err)
		return 1
	}
	return 0
}

func parseHeaders(lines []string) (http.Header, error) {
	h := http.Header{}
	for _, line := range lines {
		name, value, ok := strings.Cut(line, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("%q is not \"Name: value\"", line)
		}
		h.Add(name, strings.TrimSpace(value))
	}
	return h, nil
}

// embeddedBackend is the demo backend run in-process on loopback.
type embeddedBackend struct {
	url    string
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startEmbeddedBackend(opts backend.Options) (*embeddedBackend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &embeddedBackend{url: "ws://" + ln.Addr().String() + "/", cancel: cancel}
	srv := backend.New(opts)
	e.wg.Go(func() { _ = srv.Serve(ctx, ln) })
	return e, nil
}

// stop shuts the demo backend down and waits for it. It runs after the
// gateway has closed its backend connection.
func (e *embeddedBackend) stop() {
	e.cancel()
	e.wg.Wait()
}

func runBackend(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) int {
	fs := newFlagSet("backend", stderr, getenv)
	var (
		listen string
		tick   time.Duration
		logs   logFlags
	)
	fs.StringVar(&listen, "listen", "127.0.0.1:8081", "listen address")
	fs.DurationVar(&tick, "tick", 0, "send a tick notification to every client this often (0: never)")
	logs.register(fs)
	if err := fs.parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log, err := logs.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "backend:", err)
		return 2
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		log.Error("cannot listen", "err", err)
		return 1
	}
	log.Info("demo backend listening", "url", "ws://"+ln.Addr().String()+"/")
	if err := backend.New(backend.Options{Tick: tick, Logger: log}).Serve(ctx, ln); err != nil {
		log.Error("backend stopped with an error", "err", err)
		return 1
	}
	log.Info("demo backend stopped")
	return 0
}

// backendClient returns the HTTP client for dialling a wss:// backend: the
// system roots plus caFile, or no verification at all when insecure.
func backendClient(caFile string, insecure bool) (*http.Client, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure} //nolint:gosec // opt-in, warned about
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}, nil
}

// serveDebug serves net/http/pprof on addr until the returned func is
// called.
func serveDebug(addr string) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = hs.Serve(ln) }()
	return func() { hs.Close(); <-done }, nil
}

// redactSetting hides secrets in --print-config: the backend URL's
// credentials and the values of handshake headers.
func redactSetting(name string, values []string) []string {
	switch name {
	case "backend":
		if values[0] != "" {
			return []string{bridge.RedactURL(values[0])}
		}
	case "backend-header":
		out := make([]string, len(values))
		for i, v := range values {
			header, _, _ := strings.Cut(v, ":")
			out[i] = header + ": REDACTED"
		}
		return out
	}
	return values
}
