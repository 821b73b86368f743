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
	"github.com/wsbridge/wsbridge/internal/glob"
	"github.com/wsbridge/wsbridge/server"
)

func main() {
	os.Exit(run(signalContext(), os.Args[1:], os.Stdout, os.Stderr))
}

// signalContext ends at the first SIGINT or SIGTERM, which starts a
// graceful shutdown. A second one exits at once.
func signalContext() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	// SIGHUP never stops the gateway: serve reloads on it (see reload.go),
	// and until serve listens for it, it is ignored.
	signal.Ignore(syscall.SIGHUP)
	go func() {
		<-sigs
		cancel()
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "wsbridge: second signal (%v): exiting now, without waiting for the shutdown\n", sig)
		os.Exit(1)
	}()
	return ctx
}

const usage = `Usage: wsbridge <command> [flags]

Commands:
  serve     run the gateway (gRPC, REST, /ws, /rpc) in front of --backend,
            or of the embedded demo backend with --demo
  stats     show a running gateway's counters (--json, --watch)
  check     check a configuration as serve would (same flags, environment and --config), and print it
  call      make one call through a running gateway: call METHOD [PARAMS_JSON]
  backend   run the demo JSON-RPC WebSocket backend alone
  version   print the version, commit and Go version

Run 'wsbridge <command> --help' for a command's flags.
`

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stdout, stderr)
	case "check":
		return check(args[1:], stdout, stderr)
	case "stats":
		return statsCmd(ctx, args[1:], stdout, stderr)
	case "call":
		return callCmd(ctx, args[1:], stdout, stderr)
	case "backend":
		return runBackend(ctx, args[1:], stderr)
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

// parseArgs parses a command's flags: ok false means return code.
func parseArgs(fs *flagSet, args []string) (code int, ok bool) {
	if err := fs.parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	if fs.NArg() > 0 && fs.Name() != "call" {
		fmt.Fprintf(fs.out, "wsbridge %s: unexpected arguments %q\n", fs.Name(), fs.Args())
		return 2, false
	}
	return 0, true
}

// version and commit are set at build time (make build passes them with
// -ldflags -X); otherwise the module's build information is used.
var version, commit string

func versionString() string {
	v, rev := buildVersion()
	return fmt.Sprintf("wsbridge %s\ncommit %s\n%s", v, rev, runtime.Version())
}

// buildVersion returns the version and commit: those stamped at build
// time, else the module's build information's.
func buildVersion() (v, rev string) {
	v, rev = version, commit
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
	return v, rev
}

type logFlags struct{ format, level string }

func (l *logFlags) register(fs *flagSet) {
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn or error")
}

func (l *logFlags) logger(fs *flagSet, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fs.badValue("log-level", "must be debug, info, warn or error")
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fs.badValue("log-format", "must be text or json")
}

// serve is `wsbridge serve`: flags, then options, then Run.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", stderr)
	var sf serveFlags
	sf.register(fs)
	if code, ok := parseArgs(fs, args); !ok {
		return code
	}
	if sf.printConfig {
		return checkAndPrint(fs, &sf, false, stdout, stderr)
	}
	log, err := sf.logs.logger(fs, stderr)
	if err == nil {
		for _, name := range fs.unknownEnv() {
			log.Warn("environment variable names no flag of wsbridge serve; ignored", "variable", name)
		}
		var opts server.Options
		if opts, err = sf.options(fs, log); err == nil {
			return runServer(ctx, sf, opts, log, func(srv *server.Server) {
				go watchReload(ctx, args, &sf, fs, srv, opts.Auth, log)
			})
		}
	}
	fmt.Fprintf(stderr, "wsbridge serve: %v\n", err)
	return 2
}

// check is `wsbridge check`: every check serve makes before it listens
// (values, files, TLS pairs, descriptor sets and their mapping, HTTP
// rules), then the effective configuration, redacted; or serve's one-line
// error and exit code 2. It starts nothing.
func check(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("check", stderr)
	var sf serveFlags
	sf.register(fs)
	if code, ok := parseArgs(fs, args); !ok {
		return code
	}
	return checkAndPrint(fs, &sf, true, stdout, stderr)
}

// checkAndPrint checks the configuration of fs and sf as serve would,
// and prints it: with files, every check (wsbridge check: the files it
// names are read too), else the values alone (serve --print-config, which
// shows a configuration meant for another machine, whose files may not
// be here).
func checkAndPrint(fs *flagSet, sf *serveFlags, files bool, stdout, stderr io.Writer) int {
	var err error
	if files {
		err = sf.dryRun(fs)
	} else {
		err = sf.check(fs)
	}
	var out []byte
	if err == nil {
		out, err = fs.effective(redactSetting)
	}
	if err == nil {
		var sec sections
		if sec, err = readSections(fs.config); err == nil {
			out, err = sec.redacted().appendYAML(out)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "wsbridge %s: %v\n", fs.Name(), err)
		return 2
	}
	_, _ = stdout.Write(out)
	return 0
}

// dryRun runs serve's checks: the flags' values and files (options), then
// what the server would refuse at start (server.Check).
func (sf *serveFlags) dryRun(fs *flagSet) error {
	log, err := sf.logs.logger(fs, io.Discard)
	if err != nil {
		return err
	}
	opts, err := sf.options(fs, log)
	if err != nil {
		return err
	}
	if sf.demo {
		opts.Bridge.URL = "ws://127.0.0.1:1/" // the demo backend's, once started
	}
	return server.Check(opts)
}

// runServer starts what the options need (the demo backend, pprof) and
// runs the gateway until ctx ends.
func runServer(ctx context.Context, sf serveFlags, opts server.Options, log *slog.Logger, started func(*server.Server)) int {
	if sf.demo {
		demo, err := startEmbeddedBackend(backend.Options{Tick: sf.demoTick, Logger: log.With("component", "demo-backend")})
		if err != nil {
			log.Error("cannot start the embedded demo backend", "err", err)
			return 1
		}
		defer demo.stop()
		opts.Bridge.URL = demo.url
		log.Info("--demo: started the embedded demo backend", "url", demo.url)
	}
	var tokens interface{ Check(string) bool }
	if opts.Auth != nil {
		tokens = opts.Auth
	}
	if opts.AdminAddr != "" {
		opts.AdminHandler = debugHandler(tokens) // pprof on the admin listener
	}
	if sf.debugAddr != "" {
		stopDebug, addr, err := serveDebug(sf.debugAddr, tokens, opts.MaxHeaderBytes, opts.AllowedHosts)
		if err != nil {
			log.Error("cannot listen on --debug-addr", "err", err)
			return 1
		}
		defer stopDebug()
		log.Info("pprof listening", "addr", addr)
	}
	tp, stopTracing, err := tracing(ctx, log)
	if err != nil {
		log.Error("cannot start tracing", "err", err)
		return 1
	}
	if tp != nil {
		opts.TracerProvider = tp
		defer func() {
			// Flush the spans of the last calls, briefly.
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := stopTracing(fctx); err != nil {
				log.Warn("tracing did not flush", "err", err)
			}
		}()
	} else if opts.Bridge.TraceParam != "" {
		log.Warn("--backend-trace-param has no effect: tracing is off (set OTEL_EXPORTER_OTLP_ENDPOINT)")
	}
	opts.Version, opts.Commit = buildVersion()
	srv, err := server.New(opts)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	started(srv)
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

func runBackend(ctx context.Context, args []string, stderr io.Writer) int {
	fs := newFlagSet("backend", stderr)
	var (
		listen string
		tick   time.Duration
		logs   logFlags
	)
	fs.StringVar(&listen, "listen", "127.0.0.1:8081", "listen address")
	fs.duration(&tick, "tick", 0, "send a tick notification to every client this often (0: never)")
	logs.register(fs)
	if code, ok := parseArgs(fs, args); !ok {
		return code
	}
	log, err := logs.logger(fs, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "wsbridge backend:", err)
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
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure, CipherSuites: server.AEADCipherSuites} //nolint:gosec // opt-in, warned about
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
// called; it returns the address it listens on. With tokens (auth not nil)
// every path requires one, as the gateway's own faces do. The command line
// it shows (/debug/pprof/cmdline) has its secrets redacted, as
// --print-config has.
func serveDebug(addr string, tokens interface{ Check(string) bool }, maxHeaderBytes int, allowedHosts []string) (func(), string, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	debug := debugHandler(tokens)
	// As on every listener (421 otherwise): a web page whose name is
	// rebound to this address (DNS rebinding) must not read profiles or
	// start them. IP addresses and localhost are served: the listener is
	// private, and a rebinding page can only send its own name.
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !privateHost(r.Host, allowedHosts) {
			http.Error(w, "host not served here (see --allowed-hosts)", http.StatusMisdirectedRequest)
			return
		}
		debug.ServeHTTP(w, r)
	})
	hs := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: maxHeaderBytes}
	done := make(chan struct{})
	go func() { defer close(done); _ = hs.Serve(ln) }()
	return func() { hs.Close(); <-done }, ln.Addr().String(), nil
}

// privateHost reports whether a request's Host may reach a private
// listener: an IP address, localhost, or one of allowed (patterns).
func privateHost(hostport string, allowed []string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" || net.ParseIP(strings.Trim(host, "[]")) != nil {
		return true
	}
	return glob.Any(allowed, host)
}

// debugHandler is net/http/pprof at /debug/pprof/, behind the token when
// there are tokens, with its command line redacted.
func debugHandler(tokens interface{ Check(string) bool }) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, strings.Join(redactArgs(os.Args), "\x00"))
	})
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	var handler http.Handler = mux
	if tokens != nil {
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tok, ok := auth.BearerToken(r.Header.Get("Authorization")); !ok || !tokens.Check(tok) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="wsbridge"`)
				http.Error(w, "missing or invalid bearer token", http.StatusUnauthorized)
				return
			}
			mux.ServeHTTP(w, r)
		})
	}
	return handler
}

// redactArgs returns a command line with the values of the flags that may
// hold secrets redacted, in any of the flag package's spellings
// (--backend=V, -backend V, ...): the backend URL keeps only its scheme,
// host and port, a handshake header only its name.
func redactArgs(args []string) []string {
	redact := map[string]func(string) string{
		"backend": func(v string) string { return bridge.DisplayURL(v) + "/REDACTED" },
		"backend-header": func(v string) string {
			name, _, _ := strings.Cut(v, ":")
			return name + ": REDACTED"
		},
	}
	out := append([]string(nil), args...)
	for i := 0; i < len(out); i++ {
		a := out[i]
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := redact[name]
		if !strings.HasPrefix(a, "-") || f == nil {
			continue
		}
		switch {
		case hasValue:
			out[i] = a[:len(a)-len(value)] + f(value)
		case i+1 < len(out):
			out[i+1] = f(out[i+1])
			i++
		}
	}
	return out
}

// redactSetting hides secrets in --print-config: the backend URL's
// credentials and the values of handshake headers.
func redactSetting(name string, values []string) []string {
	switch name {
	case "backend":
		out := make([]string, len(values))
		for i, v := range values {
			out[i] = bridge.RedactURL(v)
		}
		return out
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
