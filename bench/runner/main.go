// Command runner is `make bench`: it starts every server as its own
// process on loopback, runs the cases of docs/performance.md interleaved
// (for each payload and concurrency, every case in turn, so that the
// machine's drift hits all alike), prints Markdown tables (every cell; the
// latency of one caller with what each face adds over its direct baseline)
// with the targets met or missed, and writes the raw figures as JSON under
// bench/results/.
//
// The peer cases (P-RPC, P-WS) run proxyd, a JSON-RPC gateway of the same
// field, against the same demo backend; they are skipped, and their targets
// reported as not measured, when there is no proxyd binary (see peer.go).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wsbridge/wsbridge/typed/typedtest"
)

type options struct {
	bin, out, proxyd string
	duration, warmup time.Duration
	cases            []string
	concurrency      []int
	// largeConcurrency replaces concurrency for the largePayload.
	largeConcurrency []int
	payloads         []string
	idleClients      []int
	pendingN         int
}

// largePayload is measured at fewer concurrency levels (-large-c): at 64 KiB
// each cell moves far more bytes, and the levels above 16 would add minutes
// to make bench while saying little that 20 B and 1 KiB do not.
const largePayload = "64KiB"

func main() {
	var o options
	var cases, conc, largeConc, payloads, idle string
	flag.StringVar(&o.bin, "bin", "bench/bin", "directory holding wsbridge, benchkit, ghz and proxyd")
	flag.StringVar(&o.out, "out", "bench/results", "where to write the JSON results")
	flag.StringVar(&o.proxyd, "proxyd", "", "the peer gateway's binary (default BIN/proxyd); P-RPC and P-WS are skipped without one")
	flag.DurationVar(&o.duration, "d", 3*time.Second, "measured duration of each cell")
	flag.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "unmeasured warm-up of each cell")
	flag.StringVar(&cases, "cases", "A,A-REST,B,B-RPC,C,D,E,F,G,P-RPC,P-WS,WAN,BACKENDS,TYPED,MEM", "cases to run")
	flag.StringVar(&conc, "c", "1,16,64,256", "concurrency levels")
	flag.StringVar(&largeConc, "large-c", "1,16", "concurrency levels for the "+largePayload+" payload")
	flag.StringVar(&payloads, "payloads", "20B,1KiB,"+largePayload, "param payloads")
	flag.StringVar(&idle, "idle-clients", "10000,50000", "MEM: idle /ws client counts, each on a fresh gateway")
	flag.IntVar(&o.pendingN, "pending", 100000, "MEM: calls in flight at once")
	flag.Parse()
	if o.proxyd == "" {
		o.proxyd = filepath.Join(o.bin, "proxyd")
	}
	o.cases = strings.Split(cases, ",")
	var err error
	if o.concurrency, err = ints(conc); err == nil {
		if o.largeConcurrency, err = ints(largeConc); err == nil {
			o.idleClients, err = ints(idle)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	o.payloads = strings.Split(payloads, ",")
	for _, p := range o.payloads {
		if _, ok := payloadJSON[p]; !ok {
			fmt.Fprintf(os.Stderr, "bench: unknown payload %q\n", p)
			os.Exit(2)
		}
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func ints(list string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("bad number list %q: %w", list, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// concFor is the concurrency levels a payload is measured at.
func (o options) concFor(payload string) []int {
	if payload == largePayload {
		return o.largeConcurrency
	}
	return o.concurrency
}

var payloadJSON = map[string]string{
	"20B":        `{"k":"0123456789abcd"}`,
	"1KiB":       `{"k":"` + strings.Repeat("x", 1014) + `"}`,
	largePayload: `{"k":"` + strings.Repeat("x", 64<<10-8) + `"}`,
}

// proc is a server under test.
type proc struct {
	name string
	cmd  *exec.Cmd
	addr string // what it said it listens on
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

// start runs a server and waits for its address: benchkit prints
// "listening ADDR"; wsbridge logs JSON with the keys given.
func start(name, bin string, args []string, keys ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	found := make(chan string, 1)
	scan := func(r io.Reader) {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, "listening "); ok {
				select {
				case found <- a:
				default:
				}
			}
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil {
				var parts []string
				for _, k := range keys {
					if v, ok := m[k].(string); ok {
						parts = append(parts, v)
					}
				}
				if len(keys) > 0 && len(parts) == len(keys) {
					select {
					case found <- strings.Join(parts, " "):
					default:
					}
				}
			}
		}
	}
	go scan(stdout)
	go scan(stderr)
	select {
	case a := <-found:
		return &proc{name: name, cmd: cmd, addr: a}, nil
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("%s did not say where it listens", name)
	}
}

// cpuSeconds is a process's user+system CPU time.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// rssKiB is a process's resident set size.
func rssKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// Row is one measured cell.
type Row struct {
	Case        string  `json:"case"`
	Payload     string  `json:"payload"`
	Concurrency int     `json:"concurrency"`
	Calls       int64   `json:"calls"`
	Errors      int64   `json:"errors"`
	RPS         float64 `json:"calls_per_second"`
	P50ms       float64 `json:"p50_ms"`
	P99ms       float64 `json:"p99_ms"`
	P999ms      float64 `json:"p999_ms"`
	CPUPer10k   float64 `json:"cpu_seconds_per_10k_calls"`
	PeakRSSKiB  int64   `json:"peak_rss_kib"`
	Measured    string  `json:"measured_process"`
}

type loadResult struct {
	Calls  int64   `json:"calls"`
	Errors int64   `json:"errors"`
	RPS    float64 `json:"rps"`
	P50ms  float64 `json:"p50_ms"`
	P99ms  float64 `json:"p99_ms"`
	P999ms float64 `json:"p999_ms"`
}

// measure runs fn while sampling target's CPU and peak RSS.
func measure(target *proc, fn func() (loadResult, error)) (loadResult, float64, int64, error) {
	cpu0 := cpuSeconds(target.pid())
	peak := rssKiB(target.pid())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				peak = max(peak, rssKiB(target.pid()))
			}
		}
	})
	r, err := fn()
	close(stop)
	wg.Wait()
	return r, cpuSeconds(target.pid()) - cpu0, peak, err
}

func (o options) ghz(addr, payload string, conc int) (loadResult, error) {
	return o.ghzCall(addr, "wsbridge.v1.BridgeService/Call", restBody(payload), conc)
}

// ghzCall runs ghz on one rpc (found by server reflection) with body.
func (o options) ghzCall(addr, call, body string, conc int) (loadResult, error) {
	skip := max(conc*20, 100)
	cmd := exec.Command(filepath.Join(o.bin, "ghz"), "--insecure", "--call", call,
		"-d", body, "-c", strconv.Itoa(conc), "-z", (o.duration + o.warmup).String(), "--skipFirst", strconv.Itoa(skip),
		"--format", "json", addr)
	out, err := cmd.Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("ghz: %w", err)
	}
	var g struct {
		RPS     float64 `json:"rps"`
		Latency []struct {
			Percentage int     `json:"percentage"`
			Latency    float64 `json:"latency"`
		} `json:"latencyDistribution"`
		// One entry per call (after --skipFirst): ghz's own distribution
		// stops at p99, so p99.9 is taken from here, and p50 and p99 too,
		// so that all three are read the same way.
		Details []struct {
			Latency int64  `json:"latency"` // ns
			Error   string `json:"error"`
		} `json:"details"`
		Codes map[string]int64 `json:"statusCodeDistribution"`
	}
	if err := json.Unmarshal(out, &g); err != nil {
		return loadResult{}, err
	}
	r := loadResult{Calls: g.Codes["OK"], RPS: g.RPS}
	for code, n := range g.Codes {
		// ghz cancels the calls in flight when its time is up; they come
		// back UNAVAILABLE or CANCELED and are not errors of the server.
		if code != "OK" && code != "Unavailable" && code != "Canceled" {
			r.Errors += n
		}
	}
	if un := g.Codes["Unavailable"] + g.Codes["Canceled"]; un > int64(conc) {
		r.Errors += un - int64(conc)
	}
	var lat []int64
	for _, d := range g.Details {
		if d.Error == "" {
			lat = append(lat, d.Latency)
		}
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		r.P50ms, r.P99ms, r.P999ms = quantileMS(lat, 0.50), quantileMS(lat, 0.99), quantileMS(lat, 0.999)
		return r, nil
	}
	for _, l := range g.Latency {
		switch l.Percentage {
		case 50:
			r.P50ms = l.Latency / 1e6
		case 99:
			r.P99ms = l.Latency / 1e6
		}
	}
	return r, nil
}

// quantileMS is the nearest-rank quantile q of sorted latencies in ns, in ms:
// the smallest value that at least q of the calls did not exceed (what an HDR
// histogram reports, as benchkit's do).
func quantileMS(sorted []int64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return float64(sorted[max(i, 0)]) / 1e6
}

// rpcBody is one JSON-RPC echo call; restBody is the same call on /v1/call.
func rpcBody(payload string) string {
	return `{"jsonrpc":"2.0","id":1,"method":"echo","params":` + payloadJSON[payload] + `}`
}

func restBody(payload string) string {
	return `{"method":"echo","params":` + payloadJSON[payload] + `}`
}

// loadHTTP posts body to url from conc workers, one call per request over
// keep-alive connections. A reply counts only with status 200 and a result.
func (o options) loadHTTP(url, body string, conc int) (loadResult, error) {
	return o.benchkitLoad("-mode", "http", "-url", url, "-c", strconv.Itoa(conc), "-body", body, "-ok", `"result":`)
}

// loadWS keeps conc echo calls in flight on one WebSocket; at conc 1 that is
// one call at a time.
func (o options) loadWS(url, payload string, conc int) (loadResult, error) {
	return o.benchkitLoad("-mode", "ws", "-url", url, "-c", strconv.Itoa(conc), "-params", payloadJSON[payload])
}

func (o options) benchkitLoad(args ...string) (loadResult, error) {
	args = append([]string{"load", "-d", o.duration.String(), "-warmup", o.warmup.String()}, args...)
	out, err := exec.Command(filepath.Join(o.bin, "benchkit"), args...).Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("benchkit load: %w", err)
	}
	var r loadResult
	return r, json.Unmarshal(out, &r)
}

type env struct {
	backend, gateway, echo, rest, naive, wan, gatewayWAN, naiveWAN *proc
	// backendURL is the backend's WebSocket URL, backendHTTP the same
	// server for plain JSON-RPC POSTs.
	backendURL, backendHTTP, grpc, http string

	// The peer (P-RPC, P-WS): nil, with the reason in peerSkipped, when it
	// is not run.
	peer        *peer
	peerSkipped string

	// BACKENDS: a second demo backend, a proxy making the first 200 ms
	// slower (100 ms each way), and gateways in front of two backends.
	backend2, slowProxy                  *proc
	gateway2B, gatewaySlow, gatewayHedge *proc

	// TYPED: a gateway serving bench.v1.Bench (benchProto) besides Call.
	gatewayTyped *proc
}

// benchProto maps a typed rpc onto the backend's echo with the params the
// generic Call case sends ({"k": ...}), so that the two compare the same
// backend traffic.
const benchProto = `syntax = "proto3";
package bench.v1;
import "wsbridge/v1/options.proto";
service Bench {
  option (wsbridge.v1.jsonrpc_service) = {};
  rpc Echo(Payload) returns (Payload);
}
message Payload { string k = 1; }
`

func (o options) startAll() (*env, []*proc, error) {
	var all []*proc
	must := func(p *proc, err error) *proc {
		if err == nil {
			all = append(all, p)
		}
		return p
	}
	e := &env{}
	var err error
	wsb, kit := filepath.Join(o.bin, "wsbridge"), filepath.Join(o.bin, "benchkit")
	if e.backend = must(start("backend", wsb, []string{"backend", "--listen", "127.0.0.1:0", "--log-format", "json"}, "url")); e.backend == nil {
		return nil, all, errors.New("backend did not start")
	}
	e.backendURL = e.backend.addr
	backendHost := strings.TrimSuffix(strings.TrimPrefix(e.backendURL, "ws://"), "/")
	e.backendHTTP = "http://" + backendHost + "/"
	startGW := func(name, backend string, extra ...string) (*proc, error) {
		args := []string{"serve", "--backend", backend, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
			"--max-inflight", "1000000", "--max-inflight-per-client", "0", "--log-format", "json"}
		return start(name, wsb, append(args, extra...), "grpc", "http")
	}
	if e.gateway, err = startGW("wsbridge", e.backendURL); err != nil {
		return nil, all, err
	}
	all = append(all, e.gateway)
	e.grpc, e.http, _ = strings.Cut(e.gateway.addr, " ")
	if e.echo = must(start("echo-server", kit, []string{"echo-server"})); e.echo == nil {
		return nil, all, errors.New("echo-server did not start")
	}
	if e.rest = must(start("rest-gateway", kit, []string{"rest-gateway", "--grpc", e.echo.addr})); e.rest == nil {
		return nil, all, errors.New("rest-gateway did not start")
	}
	if e.naive = must(start("naive-gateway", kit, []string{"naive-gateway", "--backend", e.backendURL})); e.naive == nil {
		return nil, all, errors.New("naive-gateway did not start")
	}
	if e.wan = must(start("wan-proxy", kit, []string{"wan-proxy", "--upstream", backendHost, "--one-way", "5ms"})); e.wan == nil {
		return nil, all, errors.New("wan-proxy did not start")
	}
	if e.gatewayWAN, err = startGW("wsbridge-wan", "ws://"+e.wan.addr+"/"); err != nil {
		return nil, all, err
	}
	all = append(all, e.gatewayWAN)
	if e.naiveWAN = must(start("naive-gateway-wan", kit, []string{"naive-gateway", "--backend", "ws://" + e.wan.addr + "/"})); e.naiveWAN == nil {
		return nil, all, errors.New("naive-gateway-wan did not start")
	}
	if slices.Contains(o.cases, "P-RPC") || slices.Contains(o.cases, "P-WS") {
		e.peer, e.peerSkipped, err = o.startPeer(e.backendHTTP, e.backendURL)
		if err != nil {
			return nil, all, err
		}
		if e.peer != nil {
			all = append(all, e.peer.rpc, e.peer.ws)
		}
	}
	if slices.Contains(o.cases, "TYPED") {
		set, err := typedtest.Compile(map[string]string{"bench/v1/bench.proto": benchProto}, []string{"proto"}, "bench/v1/bench.proto")
		if err != nil {
			return nil, all, fmt.Errorf("bench.proto: %w", err)
		}
		path := filepath.Join(os.TempDir(), "wsbridge-bench.binpb")
		if err := os.WriteFile(path, set, 0o644); err != nil {
			return nil, all, err
		}
		if e.gatewayTyped, err = startGW("wsbridge-typed", e.backendURL, "--descriptor-set", path); err != nil {
			return nil, all, err
		}
		all = append(all, e.gatewayTyped)
	}
	if !slices.Contains(o.cases, "BACKENDS") {
		return e, all, nil
	}
	if e.backend2 = must(start("backend2", wsb, []string{"backend", "--listen", "127.0.0.1:0", "--log-format", "json"}, "url")); e.backend2 == nil {
		return nil, all, errors.New("backend2 did not start")
	}
	if e.slowProxy = must(start("slow-proxy", kit, []string{"wan-proxy", "--upstream", backendHost, "--one-way", "100ms"})); e.slowProxy == nil {
		return nil, all, errors.New("slow-proxy did not start")
	}
	slow := "ws://" + e.slowProxy.addr + "/"
	gws := []struct {
		p    **proc
		name string
		args []string
	}{
		{&e.gateway2B, "wsbridge-2-backends", []string{"--backend", e.backend2.addr, "--balance", "least-inflight"}},
		{&e.gatewaySlow, "wsbridge-slow-backend", []string{"--backend", e.backend2.addr, "--balance", "round-robin"}},
		{&e.gatewayHedge, "wsbridge-hedged", []string{"--backend", e.backend2.addr, "--balance", "round-robin", "--hedge-methods", "echo", "--hedge-after", "20ms"}},
	}
	for _, gw := range gws {
		first := e.backendURL
		if gw.p != &e.gateway2B {
			first = slow
		}
		if *gw.p, err = startGW(gw.name, first, gw.args...); err != nil {
			return nil, all, err
		}
		all = append(all, *gw.p)
	}
	return e, all, nil
}

func (o options) cell(e *env, name, payload string, conc int) (Row, error) {
	row := Row{Case: name, Payload: payload, Concurrency: conc}
	var target *proc
	var fn func() (loadResult, error)
	gwGRPC := strings.Fields(e.gateway.addr)[0]
	switch name {
	case "A":
		target, fn = e.echo, func() (loadResult, error) { return o.ghz(e.echo.addr, payload, conc) }
	case "A-REST":
		target, fn = e.rest, func() (loadResult, error) {
			return o.loadHTTP("http://"+e.rest.addr+"/v1/call", restBody(payload), conc)
		}
	case "B":
		target, fn = e.backend, func() (loadResult, error) { return o.loadWS(e.backendURL, payload, conc) }
	case "B-RPC":
		target, fn = e.backend, func() (loadResult, error) { return o.loadHTTP(e.backendHTTP, rpcBody(payload), conc) }
	case "C":
		target, fn = e.gateway, func() (loadResult, error) { return o.ghz(gwGRPC, payload, conc) }
	case "D":
		target, fn = e.gateway, func() (loadResult, error) { return o.loadHTTP("http://"+e.http+"/v1/call", restBody(payload), conc) }
	case "E":
		target, fn = e.gateway, func() (loadResult, error) { return o.loadHTTP("http://"+e.http+"/rpc", rpcBody(payload), conc) }
	case "F":
		target, fn = e.gateway, func() (loadResult, error) { return o.loadWS("ws://"+e.http+"/ws", payload, conc) }
	case "P-RPC":
		target, fn = e.peer.rpc, func() (loadResult, error) { return o.loadHTTP("http://"+e.peer.rpc.addr+"/", rpcBody(payload), conc) }
	case "P-WS":
		target, fn = e.peer.ws, func() (loadResult, error) { return o.loadWS("ws://"+e.peer.ws.addr+"/", payload, conc) }
	case "G":
		target, fn = e.naive, func() (loadResult, error) { return o.ghz(e.naive.addr, payload, conc) }
	case "C-WAN":
		target, fn = e.gatewayWAN, func() (loadResult, error) { return o.ghz(strings.Fields(e.gatewayWAN.addr)[0], payload, conc) }
	case "G-WAN":
		target, fn = e.naiveWAN, func() (loadResult, error) { return o.ghz(e.naiveWAN.addr, payload, conc) }
	case "C-T":
		// The generic Call on the typed gateway process: the same process
		// as T, so that their CPU compares calls alone.
		target = e.gatewayTyped
		fn = func() (loadResult, error) { return o.ghz(strings.Fields(target.addr)[0], payload, conc) }
	case "T":
		target = e.gatewayTyped
		fn = func() (loadResult, error) {
			return o.ghzCall(strings.Fields(target.addr)[0], "bench.v1.Bench/Echo", payloadJSON[payload], conc)
		}
	case "C-1B", "C-2B", "C-SLOW", "C-HEDGE":
		target = map[string]*proc{"C-1B": e.gateway, "C-2B": e.gateway2B, "C-SLOW": e.gatewaySlow, "C-HEDGE": e.gatewayHedge}[name]
		fn = func() (loadResult, error) { return o.ghz(strings.Fields(target.addr)[0], payload, conc) }
	default:
		return row, fmt.Errorf("unknown case %s", name)
	}
	r, cpu, peak, err := measure(target, fn)
	if err != nil {
		return row, fmt.Errorf("%s %s c%d: %w", name, payload, conc, err)
	}
	row.Calls, row.Errors, row.RPS, row.P50ms, row.P99ms, row.P999ms = r.Calls, r.Errors, r.RPS, r.P50ms, r.P99ms, r.P999ms
	if r.Calls > 0 {
		// CPU was measured over warm-up and run; calls over the run only.
		total := float64(r.Calls) * float64(o.duration+o.warmup) / float64(o.duration)
		row.CPUPer10k = cpu / total * 10000
	}
	row.PeakRSSKiB, row.Measured = peak, target.name
	return row, nil
}

// Mem is the result of the memory runs.
type Mem struct {
	Idle              []IdleRun `json:"idle"`
	Pending           int       `json:"pending_calls"`
	PendingOK         int64     `json:"pending_ok"`
	PendingErrors     int64     `json:"pending_errors"`
	PendingRSSDelta   int64     `json:"pending_rss_delta_kib"`
	BytesPerPending   float64   `json:"bytes_per_pending_call"`
	PendingInFlightAt int64     `json:"in_flight_when_measured"`
	Error             string    `json:"error,omitempty"`
}

// IdleRun is one count of idle /ws clients held by a fresh gateway.
type IdleRun struct {
	Clients          int     `json:"clients"`
	RSSDeltaKiB      int64   `json:"rss_delta_kib"`
	KiBPerIdleClient float64 `json:"kib_per_idle_client"`
	// Held is true when every client connected and none was dropped while
	// the gateway's RSS settled; Closed counts the dropped.
	Held   bool   `json:"held"`
	Closed int64  `json:"closed"`
	Error  string `json:"error,omitempty"`
}

func (m *Mem) idle(n int) *IdleRun {
	for i := range m.Idle {
		if m.Idle[i].Clients == n {
			return &m.Idle[i]
		}
	}
	return nil
}

// fdMargin is what a process needs besides one descriptor per client: the
// backend link, listeners, the runtime's own.
const fdMargin = 1024

// raiseNoFile lifts this process's RLIMIT_NOFILE so that the servers and
// load drivers it starts inherit it: the soft limit to the hard one and, where
// the process may (CAP_SYS_RESOURCE), both to want. It returns the soft limit
// in force.
func raiseNoFile(want uint64) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Max < want && syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) == nil {
		return want
	}
	// Set even when Cur == Max already: Go restores a child's soft limit
	// to what it was at start unless the program set one itself.
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Cur
}

func settleRSS(pid int) int64 {
	runtime.Gosched()
	time.Sleep(2 * time.Second)
	return rssKiB(pid)
}

// memGateway starts a fresh gateway for one memory run, with its backend
// link open, and returns it with its settled RSS.
func (o options) memGateway(e *env) (*proc, string, int64, error) {
	gw, err := start("wsbridge-mem", filepath.Join(o.bin, "wsbridge"), []string{"serve", "--backend", e.backendURL,
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--max-inflight", "1000000", "--max-inflight-per-client", "0", "--call-timeout", "2m",
		"--log-format", "json"}, "grpc", "http")
	if err != nil {
		return nil, "", 0, err
	}
	httpAddr := strings.Fields(gw.addr)[1]
	resp, err := http.Post("http://"+httpAddr+"/rpc", "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"echo"}`))
	if err == nil {
		resp.Body.Close()
	}
	return gw, httpAddr, settleRSS(gw.pid()), nil
}

// memory measures the gateway's RSS per idle /ws client (at each count of
// o.idleClients) and per pending call, each on a fresh gateway process.
func (o options) memory(e *env, fdLimit uint64) (Mem, error) {
	m := Mem{Pending: o.pendingN}
	for _, n := range o.idleClients {
		run, err := o.idleRun(e, n, fdLimit)
		if err != nil {
			return m, err
		}
		fmt.Fprintf(os.Stderr, "MEM    %d idle /ws clients: %.1f KiB each, held %v %s\n", n, run.KiBPerIdleClient, run.Held, run.Error)
		m.Idle = append(m.Idle, run)
	}

	gw, httpAddr, base, err := o.memGateway(e)
	if err != nil {
		return m, err
	}
	defer gw.stop()
	pend := exec.Command(filepath.Join(o.bin, "benchkit"), "pending", "-n", strconv.Itoa(o.pendingN), "-conns", "100",
		"-sleep-ms", "20000", "-url", "ws://"+httpAddr+"/ws")
	pout, _ := pend.StdoutPipe()
	pend.Stderr = os.Stderr
	if err := pend.Start(); err != nil {
		return m, err
	}
	rd := bufio.NewReader(pout)
	line, _ := rd.ReadString('\n')
	if strings.TrimSpace(line) != "sent" {
		_ = pend.Process.Kill()
		_ = pend.Wait()
		return m, fmt.Errorf("pending: %q", line)
	}
	withPending := settleRSS(gw.pid())
	m.PendingInFlightAt = inFlight(httpAddr)
	m.PendingRSSDelta = withPending - base
	m.BytesPerPending = float64(m.PendingRSSDelta) * 1024 / float64(o.pendingN)
	rest, _ := io.ReadAll(rd)
	_ = pend.Wait()
	var res struct {
		OK, Errors int64
		Error      string
	}
	_ = json.Unmarshal(rest, &res)
	m.PendingOK, m.PendingErrors, m.Error = res.OK, res.Errors, res.Error
	return m, nil
}

// idleRun holds n idle /ws clients on a fresh gateway. A run that cannot
// work here (too few file descriptors), or whose clients fail, is reported
// in IdleRun.Error rather than failing the whole bench.
func (o options) idleRun(e *env, n int, fdLimit uint64) (IdleRun, error) {
	run := IdleRun{Clients: n}
	if need := uint64(n + fdMargin); fdLimit < need {
		run.Error = fmt.Sprintf("not run: the gateway and the client process each need %d open files (one per connection, plus %d), "+
			"and RLIMIT_NOFILE is %d here: the hard limit, which this process may not raise", need, fdMargin, fdLimit)
		return run, nil
	}
	gw, httpAddr, base, err := o.memGateway(e)
	if err != nil {
		return run, err
	}
	defer gw.stop()
	idle := exec.Command(filepath.Join(o.bin, "benchkit"), "idle-clients", "-n", strconv.Itoa(n), "-url", "ws://"+httpAddr+"/ws")
	stdin, _ := idle.StdinPipe()
	out, _ := idle.StdoutPipe()
	var stderr bytes.Buffer
	idle.Stderr = &stderr
	if err := idle.Start(); err != nil {
		return run, err
	}
	rd := bufio.NewReader(out)
	line, _ := rd.ReadString('\n')
	if !strings.HasPrefix(line, "ready") {
		stdin.Close()
		_ = idle.Wait()
		run.Error = strings.TrimSpace(strings.TrimSpace(line) + " " + stderr.String())
		return run, nil
	}
	run.RSSDeltaKiB = settleRSS(gw.pid()) - base
	run.KiBPerIdleClient = float64(run.RSSDeltaKiB) / float64(n)
	stdin.Close()
	line, _ = rd.ReadString('\n')
	_ = idle.Wait()
	var held int
	if _, err := fmt.Sscanf(line, "held %d closed %d", &held, &run.Closed); err != nil {
		run.Error = fmt.Sprintf("idle clients: %q %s", line, stderr.String())
		return run, nil
	}
	run.Held = held == n && run.Closed == 0
	if !run.Held {
		run.Error = fmt.Sprintf("%d of %d clients were dropped while held", run.Closed, n)
	}
	return run, nil
}

func inFlight(httpAddr string) int64 {
	resp, err := http.Get("http://" + httpAddr + "/__stats")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var s struct {
		InFlight int64 `json:"inFlight"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&s)
	return s.InFlight
}

func run(o options) error {
	// Before any child starts: they inherit the limit.
	fdLimit := raiseNoFile(uint64(slices.Max(o.idleClients) + fdMargin))
	e, all, err := o.startAll()
	defer func() {
		for _, p := range slices.Backward(all) {
			p.stop()
		}
		if e != nil && e.peer != nil {
			os.RemoveAll(e.peer.dir)
		}
	}()
	if err != nil {
		return err
	}
	want := func(c string) bool { return slices.Contains(o.cases, c) }
	var notes []string
	if e.peerSkipped != "" {
		notes = append(notes, "P-RPC and P-WS skipped: "+e.peerSkipped)
		fmt.Fprintln(os.Stderr, notes[len(notes)-1])
	}
	order := []string{"A", "A-REST", "B", "B-RPC", "C", "D", "E", "F", "G", "P-RPC", "P-WS"}
	if slices.Contains(o.payloads, largePayload) && !slices.Equal(o.largeConcurrency, o.concurrency) &&
		(slices.ContainsFunc(order, want) || want("TYPED")) {
		notes = append(notes, fmt.Sprintf("The %s payload is measured at concurrency %s only (-large-c), to keep the run short.", largePayload, joinInts(o.largeConcurrency)))
	}
	if want("B") || want("F") || want("P-WS") {
		notes = append(notes, "WebSocket cases (B, F, P-WS) use one socket: at concurrency 1 one call at a time, each after the previous reply; above 1 that many calls pipelined.")
	}
	started := time.Now()
	var rows []Row
	add := func(row Row) {
		fmt.Fprintf(os.Stderr, "%-7s %-5s c%-4d %9.0f calls/s p50 %7.3f ms p99 %7.3f ms p99.9 %7.3f ms  %.3f CPU s/10k\n",
			row.Case, row.Payload, row.Concurrency, row.RPS, row.P50ms, row.P99ms, row.P999ms, row.CPUPer10k)
		rows = append(rows, row)
	}
	for _, payload := range o.payloads {
		for _, conc := range o.concFor(payload) {
			for _, c := range order {
				if !want(c) || (strings.HasPrefix(c, "P-") && e.peer == nil) {
					continue
				}
				row, err := o.cell(e, c, payload, conc)
				if err != nil {
					return err
				}
				add(row)
			}
		}
	}
	if want("WAN") {
		for _, c := range []string{"C-WAN", "G-WAN"} {
			row, err := o.cell(e, c, "20B", 16)
			if err != nil {
				return err
			}
			add(row)
		}
	}
	if want("BACKENDS") {
		// C again beside them, so that the machine's drift hits all alike.
		for _, c := range []string{"C-1B", "C-2B", "C-SLOW", "C-HEDGE"} {
			row, err := o.cell(e, c, "20B", 16)
			if err != nil {
				return err
			}
			add(row)
		}
	}
	if want("TYPED") {
		// Typed and generic calls on one gateway process, side by side; at
		// concurrency 1 for the latency table too.
		for _, payload := range o.payloads {
			for _, conc := range o.concFor(payload) {
				if conc != 1 && conc != 16 && conc != 64 {
					continue
				}
				for _, c := range []string{"C-T", "T"} {
					row, err := o.cell(e, c, payload, conc)
					if err != nil {
						return err
					}
					add(row)
				}
			}
		}
	}
	var mem *Mem
	if want("MEM") {
		m, err := o.memory(e, fdLimit)
		if err != nil {
			return err
		}
		mem = &m
	}
	report := Report{Started: started.UTC().Format(time.RFC3339), Took: time.Since(started).Round(time.Second).String(),
		Commit: commit(), Machine: machine(), Duration: o.duration.String(), FDLimit: fdLimit,
		Notes: notes, Rows: rows, Memory: mem}
	if e.peer != nil {
		report.Peer = &e.peer.info
	}
	report.Latency = latencyTable(rows)
	report.Targets = targets(rows, mem, e.peerSkipped)
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	path := filepath.Join(o.out, "bench-"+started.UTC().Format("20060102-150405")+".json")
	b, _ := json.MarshalIndent(report, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return err
	}
	printMarkdown(os.Stdout, report)
	fmt.Printf("\nRaw figures: %s\n", path)
	return nil
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// commit names the code measured: the short HEAD, "-dirty" when tracked
// files differ from it, so that a run can be filed under its commit.
func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err != nil || len(bytes.TrimSpace(st)) > 0 {
		c += "-dirty"
	}
	return c
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores, %s %s/%s", cpu, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
