// Command wsbridge-scaledemo shows wsbridge scaled out behind an existing
// engine, nginx: one backend (`wsbridge backend`), several `wsbridge serve`
// replicas each holding its own backend socket, and nginx in front of them
// (grpc_pass for gRPC, proxying with upgrade for /ws, plain proxying for
// REST and /rpc). It drives calls through nginx on every face, kills one
// replica in the middle of the run, and prints each replica's stats and
// what the clients got. It exits 1 unless every failed call was in flight
// at the kill and failed with UNAVAILABLE, the other replicas kept serving
// every face, and no caller got another caller's reply.
//
// With --backends 2 --stop backend, every replica has two backends (round
// robin, sleep in --retry-methods) and one backend is stopped instead: then
// no call may fail at all.
//
//	go run ./cmd/wsbridge-scaledemo --wsbridge bin/wsbridge
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/childproc"
)

type config struct {
	binary    string
	nginx     string
	replicas  int
	duration  time.Duration
	killAfter time.Duration
	workers   int
	signal    string
	maxSleep  int
	backends  int
	stop      string // "replica" or "backend"
}

func main() {
	var cfg config
	flag.StringVar(&cfg.binary, "wsbridge", "bin/wsbridge", "the wsbridge binary")
	flag.StringVar(&cfg.nginx, "nginx", "nginx", "the nginx binary")
	flag.IntVar(&cfg.replicas, "replicas", 3, "wsbridge replicas behind nginx")
	flag.DurationVar(&cfg.duration, "duration", 12*time.Second, "how long to drive load")
	flag.DurationVar(&cfg.killAfter, "kill-after", 6*time.Second, "when to stop one replica")
	flag.IntVar(&cfg.workers, "workers", 8, "concurrent callers per face (gRPC, REST, /rpc, /ws)")
	flag.StringVar(&cfg.signal, "signal", "kill", "how the replica is stopped: kill (SIGKILL, a crash) or term (SIGTERM, a graceful stop)")
	flag.IntVar(&cfg.maxSleep, "max-sleep-ms", 20, "each call asks the backend to sleep 0 to this many ms, so calls are in flight when the replica goes")
	flag.IntVar(&cfg.backends, "backends", 1, "backends behind every replica (each replica keeps one socket to each)")
	flag.StringVar(&cfg.stop, "stop", "replica", "what is stopped mid-run: replica (replica 2) or backend (backend 1; needs --backends 2 or more)")
	flag.Parse()
	if cfg.signal != "kill" && cfg.signal != "term" || cfg.replicas < 2 || cfg.backends < 1 ||
		cfg.stop != "replica" && cfg.stop != "backend" || cfg.stop == "backend" && cfg.backends < 2 {
		fmt.Fprintln(os.Stderr, "scale-demo: --signal is kill or term, --replicas at least 2, --stop replica or backend (backend needs --backends 2 or more)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale-demo:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// replica is one wsbridge serve process.
type replica struct {
	proc     *childproc.Proc
	grpcAddr string
	httpAddr string
	stopped  bool
	last     map[string]any // its stats; for the stopped one, the last before it went
}

func run(ctx context.Context, cfg config) (bool, error) {
	dir, err := os.MkdirTemp("", "wsbridge-scale-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(dir)
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	var backends []*childproc.Proc
	var backendURLs []string
	serveArgs := []string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--shutdown-grace", "5s"}
	for range cfg.backends {
		be, err := childproc.Start(cfg.binary, "backend", "--listen", "127.0.0.1:0")
		if err != nil {
			return false, err
		}
		defer be.Kill()
		m, err := be.WaitLog(startCtx, "demo backend listening")
		if err != nil {
			return false, err
		}
		backends, backendURLs = append(backends, be), append(backendURLs, m["url"].(string))
		serveArgs = append(serveArgs, "--backend", m["url"].(string))
	}
	if cfg.backends > 1 {
		// The calls are sleeps: safe to repeat on the other backend.
		serveArgs = append(serveArgs, "--balance", "round-robin", "--retry-methods", "sleep")
	}

	replicas := make([]*replica, cfg.replicas)
	for i := range replicas {
		p, err := childproc.Start(cfg.binary, serveArgs...)
		if err != nil {
			return false, err
		}
		defer p.Kill()
		m, err := p.WaitLog(startCtx, "wsbridge listening")
		if err != nil {
			return false, err
		}
		replicas[i] = &replica{proc: p, grpcAddr: m["grpc"].(string), httpAddr: m["http"].(string)}
	}

	nginxGRPC, nginxHTTP := freeAddr(), freeAddr()
	if nginxGRPC == "" || nginxHTTP == "" {
		return false, errors.New("no free port for nginx")
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, nginxConf(dir, nginxGRPC, nginxHTTP, replicas), 0o644); err != nil {
		return false, err
	}
	ngx := exec.Command(cfg.nginx, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	ngx.Stdout, ngx.Stderr = os.Stdout, os.Stderr
	if err := ngx.Start(); err != nil {
		return false, fmt.Errorf("nginx: %w (install it: apt-get install nginx)", err)
	}
	defer func() {
		_ = ngx.Process.Signal(syscall.SIGQUIT) // graceful nginx stop
		_ = ngx.Wait()
	}()

	conn, err := grpc.NewClient(nginxGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if err := waitReady(startCtx, conn, "http://"+nginxHTTP); err != nil {
		return false, fmt.Errorf("nginx in front of the replicas: %w (its log: %s)", err, filepath.Join(dir, "error.log"))
	}
	fmt.Printf("scale-demo: %d wsbridge replicas behind nginx (gRPC %s, HTTP %s), backends at %s\n",
		len(replicas), nginxGRPC, nginxHTTP, strings.Join(backendURLs, ", "))
	victimName := "replica 2"
	if cfg.stop == "backend" {
		victimName = "backend 1"
	}
	fmt.Printf("scale-demo: %d callers on each of gRPC, REST, /rpc and /ws for %v; %s gets SIG%s after %v\n\n",
		cfg.workers, cfg.duration, victimName, strings.ToUpper(cfg.signal), cfg.killAfter)

	d := &driver{cfg: cfg, bridge: wsbridgev1.NewBridgeServiceClient(conn), httpBase: "http://" + nginxHTTP,
		wsURL: "ws://" + nginxHTTP + "/ws", results: map[string]*faceResult{}}
	for _, f := range faces {
		d.results[f] = &faceResult{codes: map[string]int{}}
	}
	victim := replicas[1]
	d.victim = map[string]bool{} // a stopped backend excuses no failure
	if cfg.stop == "replica" {
		d.victim = map[string]bool{victim.grpcAddr: true, victim.httpAddr: true}
	}
	loadCtx, stopLoad := context.WithTimeout(ctx, cfg.duration)
	defer stopLoad()
	var wg sync.WaitGroup
	for _, f := range faces {
		for w := range cfg.workers {
			wg.Go(func() { d.worker(loadCtx, f, w) })
		}
	}

	// The stop, mid-run.
	select {
	case <-time.After(cfg.killAfter):
	case <-loadCtx.Done():
	}
	outstanding := d.inFlight.Load()
	if cfg.stop == "backend" {
		// Backend 1 goes; every replica carries on with backend 2.
		d.stopBegan.Store(time.Now().UnixNano())
		d.cutoff.Store(time.Now().UnixNano())
		if cfg.signal == "kill" {
			backends[0].Kill()
		} else if err := backends[0].Stop(); err != nil {
			fmt.Println("scale-demo: the stopped backend exited with", err)
		}
		wg.Wait()
		for _, r := range replicas {
			if r.last, err = fetchStats(r.httpAddr); err != nil {
				return false, fmt.Errorf("stats of replica %s: %w", r.httpAddr, err)
			}
		}
		return report(cfg, replicas, d, outstanding), nil
	}
	victim.last, _ = fetchStats(victim.httpAddr)
	// A call is in flight at the stop if it started before the replica
	// stopped taking calls: for a crash, when the process is gone (a call
	// that starts while the kill is delivered is in flight at it); for
	// SIGTERM, when the signal is sent.
	d.stopBegan.Store(time.Now().UnixNano())
	if cfg.signal == "kill" {
		victim.proc.Kill()
		d.cutoff.Store(time.Now().UnixNano())
	} else {
		d.cutoff.Store(time.Now().UnixNano())
		if err := victim.proc.Stop(); err != nil {
			fmt.Println("scale-demo: the stopped replica exited with", err)
		}
	}
	victim.stopped = true
	wg.Wait()

	for _, r := range replicas {
		if !r.stopped {
			if r.last, err = fetchStats(r.httpAddr); err != nil {
				return false, fmt.Errorf("stats of replica %s: %w", r.httpAddr, err)
			}
		}
	}
	return report(cfg, replicas, d, outstanding), nil
}

var faces = []string{"grpc", "rest", "rpc", "ws"}

// driver makes the calls and keeps the score.
type driver struct {
	cfg       config
	bridge    wsbridgev1.BridgeServiceClient
	httpBase  string
	wsURL     string
	inFlight  atomic.Int64
	stopBegan atomic.Int64    // unix nanoseconds when the stop began; 0 before
	cutoff    atomic.Int64    // calls that start after this are not in flight at the stop; 0 before it is known
	victim    map[string]bool // the stopped replica's addresses; set before the load starts

	mu      sync.Mutex
	results map[string]*faceResult // by face; guarded by mu
}

type faceResult struct {
	ok, okAfterKill int
	codes           map[string]int // failures by code
	failedInFlight  int            // failed calls on the stopped replica that started before the stop
	refused         int            // calls the stopped replica refused, saying it never started them
	failedOther     int            // any other failed call: the ones that must not happen
	misdelivered    int
	latencies       []time.Duration // of successful calls
}

// record scores a call. replica is the upstream nginx passed it to (its
// X-Wsbridge-Replica header), empty when unknown.
func (d *driver) record(face string, start time.Time, code, replica string, misdelivered bool) {
	elapsed := time.Since(start)
	began, cutoff := d.stopBegan.Load(), d.cutoff.Load()
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.results[face]
	if misdelivered {
		r.misdelivered++
	}
	if code == "OK" {
		r.ok++
		r.latencies = append(r.latencies, elapsed)
		if cutoff != 0 && start.UnixNano() > cutoff {
			r.okAfterKill++
		}
		return
	}
	r.codes[code]++
	// Failed on the stopped replica, after the stop began, and started
	// before the cutoff; or refused there, never started.
	onVictim := d.victim[replica] && began != 0
	switch {
	case onVictim && code == codeUnstarted:
		r.refused++
	case onVictim && (cutoff == 0 || start.UnixNano() <= cutoff):
		r.failedInFlight++
	default:
		r.failedOther++
	}
}

// worker calls sleep with a random duration, one call at a time, and checks
// that the reply is its own: the backend echoes the duration asked for.
func (d *driver) worker(ctx context.Context, face string, id int) {
	var ws wsConn
	defer func() {
		if ws.Conn != nil {
			ws.CloseNow()
		}
	}()
	for n := 0; ctx.Err() == nil; n++ {
		ms := rand.IntN(d.cfg.maxSleep + 1)
		start := time.Now()
		d.inFlight.Add(1)
		callCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var r reply
		switch face {
		case "grpc":
			r = d.callGRPC(callCtx, ms)
		case "rest":
			r = d.callHTTP(callCtx, "/v1/call/sleep", fmt.Sprintf("[%d]", ms), "application/json")
		case "rpc":
			r = d.callHTTP(callCtx, "/rpc", fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"sleep","params":[%d]}`, n, ms), "application/json")
		case "ws":
			r = d.callWS(callCtx, &ws, n, ms)
		}
		cancel()
		d.inFlight.Add(-1)
		d.record(face, start, r.code, r.replica, r.code == "OK" && int(r.sleptMS) != ms)
	}
}

// reply is a call's outcome: "OK" or a code, the backend's answer, and the
// replica that nginx passed the call to.
type reply struct {
	code    string
	sleptMS float64
	replica string
}

const replicaHeader = "X-Wsbridge-Replica"

func (d *driver) callGRPC(ctx context.Context, ms int) reply {
	p := structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNumberValue(float64(ms))}})
	var header, trailer metadata.MD
	res, err := d.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "sleep", Params: p}, grpc.Header(&header), grpc.Trailer(&trailer))
	// nginx's own answers are trailers-only, so the header is in the trailer.
	r := reply{code: "OK", replica: lastUpstream(strings.Join(append(header.Get(replicaHeader), trailer.Get(replicaHeader)...), ", "))}
	if err != nil {
		r.code = status.Code(err).String()
		if status.Code(err) == codes.Unavailable {
			r.code = unavailableCode(errorInfoReason(err))
		}
		return r
	}
	r.sleptMS = res.GetResult().GetStructValue().GetFields()["slept_ms"].GetNumberValue()
	return r
}

// lastUpstream is the replica that answered: nginx lists every upstream it
// tried, the last one last.
func lastUpstream(v string) string {
	parts := strings.Split(v, ",")
	return strings.TrimSpace(parts[len(parts)-1])
}

// callHTTP posts to REST or /rpc: both answer {"result": {"slept_ms": N}}
// on success.
func (d *driver) callHTTP(ctx context.Context, path, body, contentType string) reply {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, d.httpBase+path, strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{code: "TRANSPORT_ERROR"}
	}
	defer resp.Body.Close()
	rep := reply{replica: lastUpstream(resp.Header.Get(replicaHeader))}
	b, _ := io.ReadAll(resp.Body)
	var r sleepReply
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable: // the gateway's: a google.rpc.Status body
		var st struct {
			Details []struct {
				Reason string `json:"reason"`
			} `json:"details"`
		}
		_ = json.Unmarshal(b, &st)
		rep.code = codes.Unavailable.String()
		for _, d := range st.Details {
			if d.Reason != "" {
				rep.code = unavailableCode(d.Reason)
			}
		}
	case resp.StatusCode == http.StatusBadGateway:
		rep.code = codes.Unavailable.String() // nginx's, for a replica lost mid-call
	case resp.StatusCode != http.StatusOK:
		rep.code = fmt.Sprintf("HTTP_%d", resp.StatusCode)
	case json.Unmarshal(b, &r) != nil:
		rep.code = "BAD_REPLY"
	case r.Error != nil:
		rep.code = jsonrpcCode(r.Error)
	default:
		rep.code, rep.sleptMS = "OK", r.Result.SleptMS
	}
	return rep
}

// sleepReply is the JSON of a reply to sleep on REST, /rpc and /ws.
type sleepReply struct {
	ID     int `json:"id"`
	Result struct {
		SleptMS float64 `json:"slept_ms"`
	} `json:"result"`
	Error *rpcError `json:"error"`
}

type rpcError struct {
	Code int `json:"code"`
	Data struct {
		Reason string `json:"reason"`
	} `json:"data"`
}

// jsonrpcCode names a JSON-RPC error code: the gateway's -32010 is
// UNAVAILABLE.
func jsonrpcCode(e *rpcError) string {
	if e.Code == -32010 {
		return unavailableCode(e.Data.Reason)
	}
	return fmt.Sprintf("JSONRPC_%d", e.Code)
}

// errorInfoReason is the reason of a gRPC error's wsbridge ErrorInfo.
func errorInfoReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == "wsbridge" {
			return info.Reason
		}
	}
	return ""
}

// callWS makes one call over the worker's /ws connection, dialling (through
// nginx) when there is none. A connection lost with the call in flight is
// UNAVAILABLE, as in every JSON-RPC client.
func (d *driver) callWS(ctx context.Context, conn *wsConn, id, ms int) reply {
	if conn.Conn == nil {
		c, resp, err := websocket.Dial(ctx, d.wsURL, nil)
		if err != nil {
			// The call was never sent.
			r := reply{code: codes.Unavailable.String()}
			if resp != nil {
				r.code, r.replica = codeUnstarted, lastUpstream(resp.Header.Get(replicaHeader))
			}
			return r
		}
		conn.Conn, conn.replica = c, lastUpstream(resp.Header.Get(replicaHeader))
	}
	rep := reply{replica: conn.replica}
	fail := func(code codes.Code) reply {
		conn.CloseNow()
		conn.Conn = nil
		rep.code = code.String()
		return rep
	}
	if err := conn.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"sleep","params":[%d]}`, id, ms)); err != nil {
		return fail(codes.Unavailable)
	}
	_, b, err := conn.Read(ctx)
	if err != nil {
		if websocket.CloseStatus(err) == websocket.StatusGoingAway {
			// The gateway answers every call it started before its 1001.
			conn.CloseNow()
			conn.Conn = nil
			rep.code = codeUnstarted
			return rep
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return fail(codes.DeadlineExceeded)
		}
		return fail(codes.Unavailable)
	}
	var r sleepReply
	switch {
	case json.Unmarshal(b, &r) != nil:
		rep.code = "BAD_REPLY"
	case r.ID != id:
		rep.code, rep.sleptMS = "OK", -1 // another call's reply: counted as misdelivered
	case r.Error != nil:
		rep.code = jsonrpcCode(r.Error)
	default:
		rep.code, rep.sleptMS = "OK", r.Result.SleptMS
	}
	return rep
}

// codeUnstarted is an UNAVAILABLE that says the call never started, so it
// is safe to retry: the gateway's reason "draining" or "unavailable"
// (ErrorInfo on gRPC and REST, data.reason on JSON-RPC), or a /ws call left
// unanswered when the gateway closed the connection with 1001.
const codeUnstarted = "Unavailable(never started)"

// unavailableCode is codeUnstarted for the gateway's reasons that say the
// call never started, else UNAVAILABLE.
func unavailableCode(reason string) string {
	switch strings.ToLower(reason) {
	case "draining", "unavailable":
		return codeUnstarted
	}
	return codes.Unavailable.String()
}

// wsConn is a worker's /ws connection and the replica behind it.
type wsConn struct {
	*websocket.Conn
	replica string
}

func report(cfg config, replicas []*replica, d *driver, outstanding int64) bool {
	fmt.Println("Replicas (each its own stats, read from the replica directly):")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "replica\tstate\trequests\terrors\tin flight\tbackend connects\tretried\trequests sent per backend\tclients now\tp50 ms\tp99 ms\t")
	for i, r := range replicas {
		state := "up"
		if r.stopped {
			state = "SIG" + strings.ToUpper(cfg.signal) + "ed (last stats)"
		}
		lat, _ := r.last["latency"].(map[string]any)
		var perBackend []string
		rows, _ := r.last["backends"].([]any)
		for _, row := range rows {
			row, _ := row.(map[string]any)
			perBackend = append(perBackend, fmt.Sprint(num(row["requestsSent"])))
		}
		fmt.Fprintf(tw, "%d %s\t%s\t%v\t%v\t%v\t%v\t%v\t%s\t%v\t%.2f\t%.2f\t\n", i+1, r.httpAddr, state,
			num(r.last["requestsHandled"]), num(r.last["errors"]), num(r.last["inFlight"]), num(r.last["backendConnects"]),
			num(r.last["retries"]), strings.Join(perBackend, " / "), num(r.last["activeClients"]), num(lat["p50Ms"]), num(lat["p99Ms"]))
	}
	tw.Flush()

	fmt.Println("\nClients (through nginx):")
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "face\tok\tok after the stop\tfailed\tby code\tin flight on the stopped replica\trefused, never started\tany other\tmisdelivered\tp50 ms\tp99 ms\t")
	pass := true
	var failed int
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range faces {
		r := d.results[f]
		n := r.failedInFlight + r.refused + r.failedOther
		failed += n
		var byCode []string
		for c, k := range r.codes {
			byCode = append(byCode, fmt.Sprintf("%s %d", c, k))
			if c != codes.Unavailable.String() && c != codeUnstarted {
				pass = false
			}
		}
		slices.Sort(byCode)
		if len(byCode) == 0 {
			byCode = []string{"-"}
		}
		slices.Sort(r.latencies)
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%d\t%d\t%d\t%d\t%.2f\t%.2f\t\n", f, r.ok, r.okAfterKill, n, strings.Join(byCode, ", "),
			r.failedInFlight, r.refused, r.failedOther, r.misdelivered, ms(r.latencies, 0.5), ms(r.latencies, 0.99))
		if r.failedOther > 0 || r.misdelivered > 0 || r.okAfterKill == 0 {
			pass = false
		}
	}
	tw.Flush()
	if cfg.stop == "backend" {
		fmt.Printf("\nBackend 1 got SIG%s with %d calls in flight at the clients; %d calls failed.\n", strings.ToUpper(cfg.signal), outstanding, failed)
		if failed == 0 && pass {
			fmt.Println("PASS: no call failed when one of two backends went (the calls written to it were sent again to the other); every face kept working; no reply went to the wrong caller.")
			return true
		}
		fmt.Println("FAIL: see the tables above (a failed call, a misdelivered reply, or a face that stopped working).")
		return false
	}
	fmt.Printf("\nReplica 2 reported %v calls in flight just before the SIG%s (the clients had %d in flight over all replicas); %d calls failed.\n",
		num(replicas[1].last["inFlight"]), strings.ToUpper(cfg.signal), outstanding, failed)
	if int64(failed) > outstanding {
		pass = false
	}
	if pass {
		fmt.Println("PASS: every failed call was in flight on the stopped replica or refused there unstarted, all with UNAVAILABLE; every face kept working; no reply went to the wrong caller.")
	} else {
		fmt.Println("FAIL: see the tables above (a failure other than UNAVAILABLE, a failed call neither in flight on the stopped replica nor refused unstarted, a misdelivered reply, or a face that stopped working).")
	}
	return pass
}

func ms(sorted []time.Duration, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[int(q*float64(len(sorted)-1))].Microseconds()) / 1000
}

// num reads a stats field: proto JSON writes 64-bit integers as strings.
func num(v any) float64 {
	switch v := v.(type) {
	case float64:
		return v
	case string:
		var f float64
		fmt.Sscan(v, &f)
		return f
	}
	return 0
}

func fetchStats(httpAddr string) (map[string]any, error) {
	resp, err := http.Get("http://" + httpAddr + "/v1/stats")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var m map[string]any
	return m, json.NewDecoder(resp.Body).Decode(&m)
}

// waitReady waits until nginx passes gRPC health checks and HTTP requests
// through to the replicas.
func waitReady(ctx context.Context, conn *grpc.ClientConn, httpBase string) error {
	health := healthpb.NewHealthClient(conn)
	for {
		res, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if err == nil && res.Status == healthpb.HealthCheckResponse_SERVING {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, httpBase+"/healthz", nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %w (last error %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freeAddr finds a free loopback port for nginx to listen on.
func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ""
	}
	defer ln.Close()
	return ln.Addr().String()
}

// nginxConf is the load balancer: gRPC with grpc_pass, /ws with the
// upgrade passed on, REST and /rpc with plain proxying. max_fails=1 takes
// a replica that refuses connections out of rotation for fail_timeout;
// new requests to it are retried on the next replica (an unsent request is
// safe to retry, even a POST).
func nginxConf(dir, grpcAddr, httpAddr string, replicas []*replica) []byte {
	var b bytes.Buffer
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // the workers read this temp directory
	}
	fmt.Fprintf(&b, `%s
daemon off;
worker_processes 2;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[2]s/client_body;
  proxy_temp_path %[2]s/proxy;
  fastcgi_temp_path %[2]s/fastcgi;
  uwsgi_temp_path %[2]s/uwsgi;
  scgi_temp_path %[2]s/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
`, user, dir)
	for _, up := range []struct {
		name string
		addr func(*replica) string
	}{{"wsbridge_grpc", func(r *replica) string { return r.grpcAddr }}, {"wsbridge_http", func(r *replica) string { return r.httpAddr }}} {
		fmt.Fprintf(&b, "  upstream %s {\n", up.name)
		for _, r := range replicas {
			fmt.Fprintf(&b, "    server %s max_fails=1 fail_timeout=10s;\n", up.addr(r))
		}
		b.WriteString("    keepalive 64;\n  }\n")
	}
	fmt.Fprintf(&b, `  server {
    listen %s http2;
    location / {
      grpc_pass grpc://wsbridge_grpc;
      add_header X-Wsbridge-Replica $upstream_addr always;
      error_page 502 503 504 = @grpc_unavailable;
    }
    # A replica lost mid-call: a proper gRPC status (UNAVAILABLE, 14)
    # rather than an HTML page.
    location @grpc_unavailable {
      default_type application/grpc;
      add_header grpc-status 14 always;
      add_header grpc-message "wsbridge replica unavailable" always;
      add_header X-Wsbridge-Replica $upstream_addr always;
      return 200;
      grpc_read_timeout 1h;
      grpc_send_timeout 1h;
    }
  }
  server {
    listen %s;
    location /ws {
      proxy_pass http://wsbridge_http;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_read_timeout 1h;
      # A replica that is shutting down refuses the upgrade with 503.
      proxy_next_upstream error timeout http_503;
      add_header X-Wsbridge-Replica $upstream_addr always;
    }
    location / {
      proxy_pass http://wsbridge_http;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_buffering off;
      proxy_read_timeout 1h;
      add_header X-Wsbridge-Replica $upstream_addr always;
    }
  }
}
`, grpcAddr, httpAddr)
	return b.Bytes()
}
