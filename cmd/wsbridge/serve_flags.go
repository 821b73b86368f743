package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/internal/auth"
	"github.com/wsbridge/wsbridge/internal/certfile"
	"github.com/wsbridge/wsbridge/server"
)

// serveFlags are the flags of `wsbridge serve`, as parsed.
type serveFlags struct {
	opts     server.Options // the flags that are options as they are
	backends *listValue
	demo     bool
	balance  string

	retry, hedge, dedup, cache *listValue
	descriptorSets             *listValue
	accessLog                  bool
	accessLogLevel             string
	hedgeAfter, cacheTTL       time.Duration
	sections                   sections // from the config file
	demoTick                   time.Duration
	maxLag                     int64
	pingEvery                  time.Duration

	headers, subMethods, unsubMethods     *listValue
	allow, deny, origins, metricsMethods  *listValue
	hosts                                 *listValue
	tokenFile, tlsCert, tlsKey, backendCA string
	tlsPair                               *certfile.Pair // loaded by options
	backendInsecure, errorData            bool
	debugAddr                             string
	printConfig                           bool
	logs                                  logFlags
}

func (sf *serveFlags) register(fs *flagSet) {
	o, bo := &sf.opts, &sf.opts.Bridge
	sf.backends = fs.list("backend", "", nil, "backend WebSocket URL (ws:// or wss://), repeatable for several backends (white-space separated in the environment); required unless --demo or backends: in --config")
	fs.StringVar(&sf.balance, "balance", "priority", "how a call picks among several backends: priority (failover by backends' priority, least loaded first), round-robin (by weight) or least-inflight")
	fs.StringVar(&bo.HealthMethod, "backend-health-method", "", "a method to call on each connected backend every --backend-health-interval (e.g. eth_blockNumber); a backend whose call fails gets no calls")
	fs.duration(&bo.HealthInterval, "backend-health-interval", 10*time.Second, "time between health calls")
	fs.duration(&bo.HealthTimeout, "backend-health-timeout", 2*time.Second, "a health call slower than this fails")
	fs.int(&bo.BreakerFailures, "breaker-failures", 5, "failed dials and lost connections in a row that open a backend's circuit breaker")
	fs.duration(&bo.BreakerCooldown, "breaker-cooldown", 10*time.Second, "how long an open breaker keeps calls from a backend before one probes it")
	fs.int64(&sf.maxLag, "backend-max-lag", 0, "with --backend-health-method: read its result as a number (decimal or a 0x quantity, e.g. eth_blockNumber's block height); a backend whose value trails the highest by more than this gets no calls (0: off)")
	fs.int(&bo.OutlierFailures, "outlier-failures", 0, "eject a backend whose requests timed out or lost their replies this many times in a row (passive outlier detection; the last backend taking calls is never ejected; 0: off)")
	fs.duration(&bo.OutlierEjection, "outlier-ejection", 30*time.Second, "how long an ejected backend gets no calls (--outlier-failures)")
	fs.duration(&bo.OutlierTimeout, "outlier-timeout", time.Second, "how long a request must go unanswered before its deadline for the timeout to count against the backend (--outlier-failures; a caller's shorter deadline says nothing of the backend)")
	fs.duration(&bo.IdleTimeout, "backend-idle-timeout", 0, "close a backend connection that had no call, subscription or listener for this long; the next call dials again (lazy mode; 0: never)")
	sf.retry = fs.list("retry-methods", ",", nil, "comma-separated method patterns safe to repeat: a call written when its connection broke is sent once more, to another backend")
	sf.hedge = fs.list("hedge-methods", ",", nil, "comma-separated method patterns to hedge: after --hedge-after without an answer, a copy goes to another backend; the first answer wins")
	fs.duration(&sf.hedgeAfter, "hedge-after", 50*time.Millisecond, "wait before hedging a call of --hedge-methods")
	sf.dedup = fs.list("dedup-methods", ",", nil, "comma-separated method patterns whose identical concurrent calls become one backend request")
	sf.cache = fs.list("cache-methods", ",", nil, "comma-separated method patterns whose replies are kept for --cache-ttl")
	fs.duration(&sf.cacheTTL, "cache-ttl", time.Second, "how long a reply of --cache-methods is kept")
	sf.descriptorSets = fs.list("descriptor-set", "", nil, "a descriptor set file (buf build -o FILE.binpb, or protoc --include_imports --descriptor_set_out) whose services carry wsbridge.v1 mapping options: served as typed gRPC, REST, Connect and gRPC-Web APIs; repeatable (white-space separated in the environment)")
	fs.StringVar(&o.HTTPRules, "http-rules", "", "a gRPC API configuration YAML (type: google.api.Service, http: rules) with REST routes for the --descriptor-set services, besides their google.api.http options")
	fs.bool(&sf.demo, "demo", false, "start the embedded demo backend in-process and use it as the backend (make run does)")
	fs.StringVar(&o.GRPCAddr, "grpc-addr", "127.0.0.1:9090", "gRPC listen address")
	fs.StringVar(&o.HTTPAddr, "http-addr", "127.0.0.1:8080", "HTTP listen address (REST, /ws, /rpc, /__stats)")
	fs.StringVar(&o.AdminAddr, "admin-addr", "", "admin listen address (e.g. 127.0.0.1:9091): /metrics, /healthz, /readyz, /livez, /__stats, /v1/stats, the dashboard and pprof move there from the HTTP listener, with no token asked (keep it private); off when empty")
	fs.bool(&bo.Eager, "backend-eager", false, "dial the backend at start and redial in the background after a loss")
	fs.int(&bo.Conns, "backend-conns", 1, "backend connections, used round-robin")
	sf.headers = fs.list("backend-header", "\n", nil, `a header for the backend handshake, as "Name: value" (repeatable; newline-separated in the environment)`)
	fs.duration(&bo.DialTimeout, "backend-dial-timeout", 5*time.Second, "bound on one backend dial, handshake included")
	fs.duration(&bo.Backoff.Base, "backoff-base", time.Second, "redial delay after the first failed dial")
	fs.float(&bo.Backoff.Multiplier, "backoff-multiplier", 1.6, "redial delay growth per failed dial (at least 1)")
	fs.float(&bo.Backoff.Jitter, "backoff-jitter", 0.2, "redial delay jitter, as a fraction from 0 to 1")
	fs.duration(&bo.Backoff.Max, "backoff-max", 120*time.Second, "longest redial delay")
	fs.duration(&sf.pingEvery, "backend-ping-interval", 15*time.Second, "WebSocket ping interval on the backend link (0 disables)")
	fs.duration(&bo.PingTimeout, "backend-ping-timeout", 5*time.Second, "a pong later than this means the backend link is lost")
	fs.duration(&bo.WriteTimeout, "backend-write-timeout", 10*time.Second, "bound on one write to the backend")
	fs.duration(&bo.CallTimeout, "call-timeout", 30*time.Second, "longest any call may take")
	fs.int(&bo.MaxInFlight, "max-inflight", 10000, "most calls in flight at once; more get RESOURCE_EXHAUSTED")
	fs.int64(&bo.MaxMessageBytes, "max-message-bytes", 4<<20, "largest message a client may send (a request body, a /ws or gRPC message) and largest request to the backend")
	fs.int64(&bo.MaxReplyBytes, "max-reply-bytes", 32<<20, "largest message from the backend; a larger reply fails its call alone with RESOURCE_EXHAUSTED and is discarded as it is read (the link stays up)")
	fs.duration(&o.ShutdownGrace, "shutdown-grace", 10*time.Second, "how long calls in flight may drain at shutdown")
	fs.duration(&o.ShutdownDelay, "shutdown-delay", 0, "at shutdown, keep serving this long with readiness NOT_SERVING before refusing calls (time for load balancers to notice)")
	fs.duration(&o.ClientPingInterval, "client-ping-interval", 30*time.Second, "WebSocket ping interval to /ws clients")
	fs.duration(&o.ClientWriteTimeout, "client-write-timeout", 10*time.Second, "a /ws client that takes longer to accept a write is closed with 1008")
	fs.int(&o.ClientBuffer, "client-buffer", 1024, "messages that may wait for one /ws client, Subscribe stream or Session before it is ended as too slow")
	fs.int64(&o.ClientBufferBytes, "client-buffer-bytes", 16<<20, "bytes of messages that may wait for one /ws client, Subscribe stream or Session before it is ended as too slow")
	sf.subMethods = fs.list("subscribe-methods", ",", []string{"*_subscribe"}, "comma-separated patterns (* = any text) of methods that create a backend subscription")
	sf.unsubMethods = fs.list("unsubscribe-methods", ",", []string{"*_unsubscribe"}, "comma-separated patterns of the methods that undo them, paired by position")
	fs.bool(&bo.Batch, "backend-batch", false, "send requests queued together as one JSON-RPC batch (for backends that handle batches; a batch's replies wait for its slowest call)")
	fs.bool(&bo.Resubscribe, "resubscribe", false, "re-issue live subscriptions after a backend reconnect (subscribers get a wsbridge_gap notification)")
	fs.bool(&sf.accessLog, "access-log", false, "log one line per finished client call: face, method, code, latency, backend, request and response bytes, client address, trace id (never params, results or credentials)")
	fs.StringVar(&sf.accessLogLevel, "access-log-level", "info", "the access log's level: debug, info, warn or error")
	fs.float(&o.AccessLogSample, "access-log-sample", 1, "the share of successful calls the access log keeps, 0 to 1 (every failed call is logged)")
	fs.StringVar(&bo.TraceParam, "backend-trace-param", "", "with tracing on (OTEL_EXPORTER_OTLP_ENDPOINT), add the call's W3C trace context to params that are a JSON object, as this member: {\"traceparent\": \"00-...\"} (JSON-RPC has no headers; off when empty)")
	fs.StringVar(&bo.CancelMethod, "cancel-method", "", "notification sent to the backend with {\"id\": <gateway id>} when a caller gives up (e.g. $/cancelRequest)")
	fs.duration(&sf.demoTick, "demo-tick", 0, "with --demo: the demo backend sends a tick notification this often (0: never)")
	fs.StringVar(&sf.tokenFile, "auth-token-file", "", "file of accepted bearer tokens, one per line (reread when it changes); enables authentication on every client face")
	fs.bool(&o.AuthAll, "auth-all", false, "require the token for health checks and reflection too")
	sf.allow = fs.list("allow-methods", ",", nil, "comma-separated method patterns clients may call (* = any text); empty allows all")
	sf.deny = fs.list("deny-methods", ",", nil, "comma-separated method patterns clients may not call")
	sf.origins = fs.list("ws-origins", ",", nil, "comma-separated host patterns of browser origins allowed on /ws; empty: same host only")
	sf.hosts = fs.list("allowed-hosts", ",", nil, "comma-separated host names (* = any text) HTTP requests may name in their Host header; empty: loopback names when listening on loopback, else any")
	fs.StringVar(&sf.tlsCert, "tls-cert", "", "certificate (PEM) for the gateway's listeners; with --tls-key serves TLS 1.2+")
	fs.StringVar(&sf.tlsKey, "tls-key", "", "private key (PEM) for --tls-cert")
	fs.StringVar(&sf.backendCA, "backend-ca", "", "extra CA certificates (PEM) trusted for a wss:// backend, besides the system roots")
	fs.bool(&sf.backendInsecure, "backend-insecure", false, "do not verify the wss:// backend's certificate (insecure; logged as a warning)")
	fs.bool(&sf.errorData, "backend-error-data", true, "pass the data member of backend errors on to clients")
	fs.int(&o.MaxClients, "max-clients", 0, "most concurrent /ws clients; more get 503 at the handshake (0: no limit)")
	fs.int(&o.MaxInFlightPerClient, "max-inflight-per-client", 1000, "most calls and notifications one client connection (gRPC, HTTP or /ws) may have in flight, so that one client leaves the rest of --max-inflight to others (0: no limit)")
	fs.int(&bo.MaxSubscriptionsPerConsumer, "max-subscriptions-per-client", 256, "most backend subscriptions one /ws client or Session may hold (0: no limit)")
	fs.int(&bo.MaxListensPerConsumer, "max-listeners-per-client", 64, "most notification methods one /ws client, Session or Subscribe stream may listen to (0: no limit)")
	fs.int(&o.MaxOpenRPCs, "max-unauthenticated-rpcs", 16, "with --auth-token-file: most RPCs to health and reflection served at once without a token")
	fs.duration(&o.UnauthenticatedIdle, "unauthenticated-idle-timeout", 10*time.Second, "with --auth-token-file: close a gRPC connection that has not authenticated an RPC once it has carried no RPC for this long")
	fs.int(&o.MaxStreamsPerConn, "max-streams-per-conn", 1024, "most concurrent streams on one gRPC connection (the client queues the rest)")
	fs.int(&o.MaxHeaderBytes, "max-header-bytes", 64<<10, "largest request header block on every listener: the gRPC and HTTP/2 header list, HTTP/1.1 headers (431 past it)")
	fs.int(&o.MaxBatch, "max-batch", 1000, "most requests in one JSON-RPC batch (/ws, /rpc); a larger batch is refused whole")
	sf.metricsMethods = fs.list("metrics-methods", ",", nil, "comma-separated method names that may appear as a label in /metrics (others are \"other\")")
	fs.StringVar(&sf.debugAddr, "debug-addr", "", "serve net/http/pprof on this address (keep it private; off when empty)")
	fs.bool(&sf.printConfig, "print-config", false, "print the effective configuration (secrets redacted) as a config file, and exit")
	fs.withConfig()
	sf.logs.register(fs)
}

// options checks every value and turns the flags into server options. An
// error is one line: where the value came from, the value, and what is
// expected.
func (sf *serveFlags) options(fs *flagSet, log *slog.Logger) (server.Options, error) {
	o := sf.opts
	bo := &o.Bridge
	o.Logger = log
	if err := sf.check(fs); err != nil {
		return o, err
	}
	var err error
	if bo.Header, err = parseHeaders(sf.headers.values); err != nil {
		return o, fmt.Errorf("%s: %w", fs.source("backend-header"), err)
	}
	for _, u := range sf.backends.values {
		bo.Backends = append(bo.Backends, bridge.BackendOptions{URL: u})
	}
	if len(bo.Backends) > 0 && len(sf.sections.Backends) > 0 {
		// Said, not silent: the file's backends and their settings
		// (headers, weights, priorities, conns) are not used.
		log.Warn("the backends given by "+fs.source("backend")+" replace the config file's backends: list and its settings",
			"config", fs.config, "file_backends", len(sf.sections.Backends), "backends", len(bo.Backends))
	}
	if len(bo.Backends) == 0 {
		if bo.Backends, err = sf.sections.backendOptions(fs.config); err != nil {
			return o, err
		}
	}
	if bo.Balance, err = bridge.ParseBalance(sf.balance); err != nil {
		return o, fs.badValue("balance", "must be priority, round-robin or least-inflight")
	}
	if bo.Methods, err = sf.sections.methodPolicies(fs.config); err != nil {
		return o, err
	}
	for _, p := range sf.retry.values {
		bo.Methods = append(bo.Methods, bridge.MethodPolicy{Pattern: p, Retry: true})
	}
	for _, p := range sf.hedge.values {
		bo.Methods = append(bo.Methods, bridge.MethodPolicy{Pattern: p, HedgeAfter: sf.hedgeAfter})
	}
	for _, p := range sf.dedup.values {
		bo.Methods = append(bo.Methods, bridge.MethodPolicy{Pattern: p, Dedup: true})
	}
	for _, p := range sf.cache.values {
		bo.Methods = append(bo.Methods, bridge.MethodPolicy{Pattern: p, CacheTTL: sf.cacheTTL})
	}
	bo.MaxLag = uint64(max(sf.maxLag, 0))
	if bo.Backoff.Jitter == 0 {
		bo.Backoff.Jitter = -1 // the bridge's zero value means its default
	}
	if sf.pingEvery <= 0 {
		bo.PingInterval = -1
	} else {
		bo.PingInterval = sf.pingEvery
	}
	bo.SubscribeMethods, bo.UnsubscribeMethods = sf.subMethods.values, sf.unsubMethods.values
	bo.AllowMethods, bo.DenyMethods, o.WSOrigins = sf.allow.values, sf.deny.values, sf.origins.values
	o.AllowedHosts = sf.hosts.values
	o.MetricsMethods = sf.metricsMethods.values
	o.DescriptorSets = sf.descriptorSets.values
	if err := o.AccessLogLevel.UnmarshalText([]byte(sf.accessLogLevel)); err != nil {
		return o, fs.badValue("access-log-level", "must be debug, info, warn or error")
	}
	if o.AccessLogSample <= 0 || o.AccessLogSample > 1 {
		return o, fs.badValue("access-log-sample", "must be more than 0 and at most 1")
	}
	if sf.accessLog {
		o.AccessLog = log.With("log", "access")
	}
	bo.DropErrorData = !sf.errorData
	if sf.tokenFile != "" {
		tokens, err := auth.Load(sf.tokenFile, log.With("component", "auth"))
		if err != nil {
			return o, fmt.Errorf("%s %s: %w", fs.source("auth-token-file"), sf.tokenFile, err)
		}
		o.Auth = tokens
	}
	if sf.tlsCert != "" {
		// Followed as the files change: a renewed certificate is served
		// to new handshakes without a restart.
		pair, err := certfile.Load(sf.tlsCert, sf.tlsKey, log)
		if err != nil {
			return o, fmt.Errorf("%s %s: %w", fs.source("tls-cert"), sf.tlsCert, err)
		}
		sf.tlsPair = pair
		o.TLS = &tls.Config{GetCertificate: pair.GetCertificate, MinVersion: tls.VersionTLS12}
		o.TLSNotAfter = pair.NotAfter
	}
	if sf.backendCA != "" || sf.backendInsecure {
		client, err := backendClient(sf.backendCA, sf.backendInsecure)
		if err != nil {
			return o, fmt.Errorf("%s: %w", fs.source("backend-ca"), err)
		}
		if sf.backendInsecure {
			log.Warn("--backend-insecure: the backend's certificate is not verified; anyone on the path can impersonate it")
		}
		bo.HTTPClient = client
	}
	return o, nil
}

// check refuses every value that parses but makes no sense.
func (sf *serveFlags) check(fs *flagSet) error {
	o, bo := &sf.opts, &sf.opts.Bridge
	var err error
	if sf.sections, err = readSections(fs.config); err != nil {
		return err
	}
	fileBackends := len(sf.sections.Backends) > 0
	switch {
	case fileBackends && len(sf.backends.values) > 0 && fs.source("backend") == "backend in "+fs.config:
		return fmt.Errorf("%s has both backend: and backends:; give one of them", fs.config)
	case sf.demo && (len(sf.backends.values) > 0 || fileBackends):
		return fmt.Errorf("--demo starts the embedded demo backend and %s names another: give one of them", fs.source("backend"))
	case !sf.demo && len(sf.backends.values) == 0 && !fileBackends:
		return fmt.Errorf("no backend: give its URL with --backend ws://HOST:PORT/PATH (or %s, or backend: in --config), or run the embedded demo backend with --demo", envName("backend"))
	case o.AdminAddr != "" && sf.debugAddr != "":
		return fmt.Errorf("%s serves pprof itself; %s is for a gateway without an admin listener: give one of them", fs.source("admin-addr"), fs.source("debug-addr"))
	case sf.demoTick != 0 && !sf.demo:
		return fmt.Errorf("%s sets the demo backend's tick, but there is no --demo", fs.source("demo-tick"))
	case sf.maxLag > 0 && bo.HealthMethod == "":
		return fmt.Errorf("%s compares the backends' health values, but there is no --backend-health-method to read them (e.g. eth_blockNumber)", fs.source("backend-max-lag"))
	case bo.IdleTimeout > 0 && bo.Eager:
		return fmt.Errorf("%s closes idle backend connections, which %s redials at once: give one of them", fs.source("backend-idle-timeout"), fs.source("backend-eager"))
	}
	for _, u := range sf.backends.values {
		if err := bridge.CheckURL(u); err != nil {
			hint := ""
			if !strings.Contains(u, "://") {
				hint = fmt.Sprintf(" (did you mean ws://%s/?)", strings.TrimSuffix(u, "/"))
			}
			return fmt.Errorf("%s: %v%s", fs.source("backend"), err, hint)
		}
	}
	positive := map[string]time.Duration{
		"backend-dial-timeout": bo.DialTimeout, "backoff-base": bo.Backoff.Base, "backoff-max": bo.Backoff.Max,
		"backend-ping-timeout": bo.PingTimeout, "backend-write-timeout": bo.WriteTimeout, "call-timeout": bo.CallTimeout,
		"backend-health-interval": bo.HealthInterval, "backend-health-timeout": bo.HealthTimeout, "breaker-cooldown": bo.BreakerCooldown,
		"outlier-ejection": bo.OutlierEjection, "outlier-timeout": bo.OutlierTimeout,
		"hedge-after": sf.hedgeAfter, "cache-ttl": sf.cacheTTL,
		"shutdown-grace": o.ShutdownGrace, "unauthenticated-idle-timeout": o.UnauthenticatedIdle, "client-ping-interval": o.ClientPingInterval, "client-write-timeout": o.ClientWriteTimeout,
	}
	for _, name := range sortedKeys(positive) {
		if positive[name] <= 0 {
			return fs.badValue(name, "must be a positive duration, such as 10s")
		}
	}
	notNegative := map[string]time.Duration{"shutdown-delay": o.ShutdownDelay, "demo-tick": sf.demoTick, "backend-idle-timeout": bo.IdleTimeout}
	for _, name := range sortedKeys(notNegative) {
		if notNegative[name] < 0 {
			return fs.badValue(name, "must not be negative")
		}
	}
	if bo.Backoff.Max < bo.Backoff.Base {
		return fs.badValue("backoff-max", "must be at least --backoff-base ("+bo.Backoff.Base.String()+")")
	}
	atLeastOne := map[string]int64{"backend-conns": int64(bo.Conns), "max-inflight": int64(bo.MaxInFlight),
		"max-message-bytes": bo.MaxMessageBytes, "max-reply-bytes": bo.MaxReplyBytes, "client-buffer": int64(o.ClientBuffer), "max-batch": int64(o.MaxBatch),
		"client-buffer-bytes": o.ClientBufferBytes, "max-unauthenticated-rpcs": int64(o.MaxOpenRPCs), "max-streams-per-conn": int64(o.MaxStreamsPerConn),
		"max-header-bytes": int64(o.MaxHeaderBytes), "breaker-failures": int64(bo.BreakerFailures)}
	for _, name := range sortedKeys(atLeastOne) {
		if atLeastOne[name] < 1 {
			return fs.badValue(name, "must be at least 1")
		}
	}
	noLimit := map[string]int{"max-clients": o.MaxClients, "max-inflight-per-client": o.MaxInFlightPerClient,
		"max-subscriptions-per-client": bo.MaxSubscriptionsPerConsumer, "max-listeners-per-client": bo.MaxListensPerConsumer,
		"outlier-failures": bo.OutlierFailures, "backend-max-lag": int(min(sf.maxLag, 1))}
	for _, name := range sortedKeys(noLimit) {
		if noLimit[name] < 0 {
			return fs.badValue(name, "must be 0 (no limit) or more")
		}
	}
	if bo.Backoff.Multiplier < 1 {
		return fs.badValue("backoff-multiplier", "must be at least 1")
	}
	if bo.Backoff.Jitter < 0 || bo.Backoff.Jitter > 1 {
		return fs.badValue("backoff-jitter", "must be from 0 (no jitter) to 1")
	}
	if len(sf.subMethods.values) != len(sf.unsubMethods.values) {
		return fmt.Errorf("%s has %d patterns and %s %d: they pair by position", fs.source("subscribe-methods"),
			len(sf.subMethods.values), fs.source("unsubscribe-methods"), len(sf.unsubMethods.values))
	}
	if (sf.tlsCert == "") != (sf.tlsKey == "") {
		return fmt.Errorf("--tls-cert and --tls-key go together: give both, or neither")
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
