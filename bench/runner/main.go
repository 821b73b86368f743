// Command runner is `make bench`: it starts every server as its own
// process on loopback, runs the cases of docs/performance.md interleaved
// (for each payload and concurrency, every case in turn, so that the
// machine's drift hits all alike), prints a Markdown table with the targets
// met or missed, and writes the raw figures as JSON under bench/results/.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wsbridge/wsbridge/typed/typedtest"
)

type options struct {
	bin, out              string
	duration, warmup      time.Duration
	cases                 []string
	concurrency           []int
	payloads              []string
	idleClients, pendingN int
}

func main() {
	var o options
	var cases, conc, payloads string
	flag.StringVar(&o.bin, "bin", "bench/bin", "directory holding wsbridge, benchkit and ghz")
	flag.StringVar(&o.out, "out", "bench/results", "where to write the JSON results")
	flag.DurationVar(&o.duration, "d", 3*time.Second, "measured duration of each cell")
	flag.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "unmeasured warm-up of each cell")
	flag.StringVar(&cases, "cases", "A,A-REST,B,C,D,E,F,G,WAN,BACKENDS,TYPED,MEM", "cases to run")
	flag.StringVar(&conc, "c", "1,16,64,256", "concurrency levels")
	flag.StringVar(&payloads, "payloads", "20B,1KiB", "param payloads")
	flag.IntVar(&o.idleClients, "idle-clients", 10000, "MEM: idle /ws clients")
	flag.IntVar(&o.pendingN, "pending", 100000, "MEM: calls in flight at once")
	flag.Parse()
	o.cases = strings.Split(cases, ",")
	for _, c := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(c)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad -c:", err)
			os.Exit(2)
		}
		o.concurrency = append(o.concurrency, n)
	}
	o.payloads = strings.Split(payloads, ",")
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

var payloadJSON = map[string]string{
	"20B":  `{"k":"0123456789abcd"}`,
	"1KiB": `{"k":"` + strings.Repeat("x", 1014) + `"}`,
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
	return o.ghzCall(addr, "wsbridge.v1.BridgeService/Call", `{"method":"echo","params":`+payloadJSON[payload]+`}`, conc)
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
		Count   int64   `json:"count"`
		Total   float64 `json:"total"`
		RPS     float64 `json:"rps"`
		Latency []struct {
			Percentage int     `json:"percentage"`
			Latency    float64 `json:"latency"`
		} `json:"latencyDistribution"`
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

func (o options) load(mode, url, payload string, conc int) (loadResult, error) {
	args := []string{"load", "-mode", mode, "-url", url, "-c", strconv.Itoa(conc), "-d", o.duration.String(), "-warmup", o.warmup.String()}
	switch {
	case mode == "ws":
		args = append(args, "-params", payloadJSON[payload])
	case strings.HasSuffix(url, "/rpc"):
		args = append(args, "-body", `{"jsonrpc":"2.0","id":1,"method":"echo","params":`+payloadJSON[payload]+`}`)
	default:
		args = append(args, "-body", `{"method":"echo","params":`+payloadJSON[payload]+`}`)
	}
	out, err := exec.Command(filepath.Join(o.bin, "benchkit"), args...).Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("benchkit load: %w", err)
	}
	var r loadResult
	return r, json.Unmarshal(out, &r)
}

type env struct {
	backend, gateway, echo, rest, naive, wan, gatewayWAN, naiveWAN *proc
	backendURL, grpc, http                                         string

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
		target, fn = e.rest, func() (loadResult, error) { return o.load("http", "http://"+e.rest.addr+"/v1/call", payload, conc) }
	case "B":
		target, fn = e.backend, func() (loadResult, error) { return o.load("ws", e.backendURL, payload, conc) }
	case "C":
		target, fn = e.gateway, func() (loadResult, error) { return o.ghz(gwGRPC, payload, conc) }
	case "D":
		target, fn = e.gateway, func() (loadResult, error) { return o.load("http", "http://"+e.http+"/v1/call", payload, conc) }
	case "E":
		target, fn = e.gateway, func() (loadResult, error) { return o.load("http", "http://"+e.http+"/rpc", payload, conc) }
	case "F":
		target, fn = e.gateway, func() (loadResult, error) { return o.load("ws", "ws://"+e.http+"/ws", payload, conc) }
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
	row.Calls, row.Errors, row.RPS, row.P50ms, row.P99ms = r.Calls, r.Errors, r.RPS, r.P50ms, r.P99ms
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
	IdleClients       int     `json:"idle_clients"`
	IdleRSSDeltaKiB   int64   `json:"idle_rss_delta_kib"`
	KiBPerIdleClient  float64 `json:"kib_per_idle_client"`
	Pending           int     `json:"pending_calls"`
	PendingOK         int64   `json:"pending_ok"`
	PendingErrors     int64   `json:"pending_errors"`
	PendingRSSDelta   int64   `json:"pending_rss_delta_kib"`
	BytesPerPending   float64 `json:"bytes_per_pending_call"`
	PendingInFlightAt int64   `json:"in_flight_when_measured"`
	Error             string  `json:"error,omitempty"`
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

// memory measures the gateway's RSS per idle /ws client and per pending
// call, each on a fresh gateway process.
func (o options) memory(e *env) (Mem, error) {
	m := Mem{IdleClients: o.idleClients, Pending: o.pendingN}
	gw, httpAddr, base, err := o.memGateway(e)
	if err != nil {
		return m, err
	}
	idle := exec.Command(filepath.Join(o.bin, "benchkit"), "idle-clients", "-n", strconv.Itoa(o.idleClients), "-url", "ws://"+httpAddr+"/ws")
	stdin, _ := idle.StdinPipe()
	out, _ := idle.StdoutPipe()
	idle.Stderr = os.Stderr
	if err := idle.Start(); err != nil {
		gw.stop()
		return m, err
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if !strings.HasPrefix(line, "ready") {
		_ = idle.Process.Kill()
		_ = idle.Wait()
		gw.stop()
		return m, fmt.Errorf("idle clients: %q", line)
	}
	m.IdleRSSDeltaKiB = settleRSS(gw.pid()) - base
	m.KiBPerIdleClient = float64(m.IdleRSSDeltaKiB) / float64(o.idleClients)
	stdin.Close()
	_ = idle.Wait()
	gw.stop()

	gw, httpAddr, base, err = o.memGateway(e)
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
	line, _ = rd.ReadString('\n')
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
	e, all, err := o.startAll()
	defer func() {
		for _, p := range slices.Backward(all) {
			p.stop()
		}
	}()
	if err != nil {
		return err
	}
	want := func(c string) bool { return slices.Contains(o.cases, c) }
	started := time.Now()
	var rows []Row
	order := []string{"A", "A-REST", "B", "C", "D", "E", "F", "G"}
	for _, payload := range o.payloads {
		for _, conc := range o.concurrency {
			for _, c := range order {
				if !want(c) {
					continue
				}
				row, err := o.cell(e, c, payload, conc)
				if err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "%-6s %-5s c%-4d %9.0f calls/s p50 %7.3f ms p99 %7.3f ms\n", c, payload, conc, row.RPS, row.P50ms, row.P99ms)
				rows = append(rows, row)
			}
		}
	}
	if want("WAN") {
		for _, c := range []string{"C-WAN", "G-WAN"} {
			row, err := o.cell(e, c, "20B", 16)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%-6s %-5s c%-4d %9.0f calls/s p50 %7.3f ms p99 %7.3f ms\n", c, "20B", 16, row.RPS, row.P50ms, row.P99ms)
			rows = append(rows, row)
		}
	}
	if want("BACKENDS") {
		// C again beside them, so that the machine's drift hits all alike.
		for _, c := range []string{"C-1B", "C-2B", "C-SLOW", "C-HEDGE"} {
			row, err := o.cell(e, c, "20B", 16)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%-7s %-5s c%-4d %9.0f calls/s p50 %7.3f ms p99 %7.3f ms\n", row.Case, "20B", 16, row.RPS, row.P50ms, row.P99ms)
			rows = append(rows, row)
		}
	}
	if want("TYPED") {
		// Typed and generic calls on one gateway process, side by side.
		for _, payload := range o.payloads {
			for _, conc := range []int{16, 64} {
				for _, c := range []string{"C-T", "T"} {
					row, err := o.cell(e, c, payload, conc)
					if err != nil {
						return err
					}
					fmt.Fprintf(os.Stderr, "%-7s %-5s c%-4d %9.0f calls/s p50 %7.3f ms p99 %7.3f ms  %.3f CPU s/10k\n", c, payload, conc, row.RPS, row.P50ms, row.P99ms, row.CPUPer10k)
					rows = append(rows, row)
				}
			}
		}
	}
	var mem *Mem
	if want("MEM") {
		m, err := o.memory(e)
		if err != nil {
			return err
		}
		mem = &m
	}
	report := Report{Started: started.UTC().Format(time.RFC3339), Took: time.Since(started).Round(time.Second).String(),
		Machine: machine(), Duration: o.duration.String(), Rows: rows, Memory: mem}
	report.Targets = targets(rows, mem)
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

// Report is the JSON written under bench/results.
type Report struct {
	Started  string   `json:"started"`
	Took     string   `json:"took"`
	Machine  string   `json:"machine"`
	Duration string   `json:"cell_duration"`
	Rows     []Row    `json:"rows"`
	Memory   *Mem     `json:"memory,omitempty"`
	Targets  []Target `json:"targets"`
}

// Target is one of the targets, evaluated.
type Target struct {
	Name     string `json:"name"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

func find(rows []Row, c, payload string, conc int) *Row {
	for i := range rows {
		if rows[i].Case == c && rows[i].Payload == payload && rows[i].Concurrency == conc {
			return &rows[i]
		}
	}
	return nil
}

func targets(rows []Row, mem *Mem) []Target {
	var ts []Target
	add := func(name string, ok bool, format string, args ...any) {
		ts = append(ts, Target{Name: name, Measured: fmt.Sprintf(format, args...), Met: ok})
	}
	p := "20B"
	if a, c := find(rows, "A", p, 64), find(rows, "C", p, 64); a != nil && c != nil {
		r := c.RPS / a.RPS
		add("C >= 60% of A's calls/s at concurrency 64", r >= 0.6, "%.0f%%", r*100)
	}
	if a, c := find(rows, "A", p, 1), find(rows, "C", p, 1); a != nil && c != nil {
		d := c.P50ms - a.P50ms
		add("C p50 at concurrency 1 within 0.2 ms of A's", d <= 0.2, "+%.3f ms (A %.3f, C %.3f)", d, a.P50ms, c.P50ms)
	}
	if ar, d := find(rows, "A-REST", p, 64), find(rows, "D", p, 64); ar != nil && d != nil {
		add("D >= A-REST (grpc-gateway proxying to a grpc-go server) at concurrency 64", d.RPS >= ar.RPS, "%.0f vs %.0f calls/s (%.2fx)", d.RPS, ar.RPS, d.RPS/ar.RPS)
	}
	if b, f := find(rows, "B", p, 64), find(rows, "F", p, 64); b != nil && f != nil {
		r := f.RPS / b.RPS
		add("F (/ws pipelined) >= 50% of B at concurrency 64", r >= 0.5, "%.0f%%", r*100)
	}
	if c, g := find(rows, "C", p, 16), find(rows, "G", p, 16); c != nil && g != nil {
		r := c.RPS / g.RPS
		add("Loopback, concurrency 16: C >= 3x G", r >= 3, "%.1fx", r)
	}
	if c, g := find(rows, "C-WAN", p, 16), find(rows, "G-WAN", p, 16); c != nil && g != nil {
		r := c.RPS / g.RPS
		add("WAN, concurrency 16: C >= 2.5x G in calls/s", r >= 2.5, "%.1fx", r)
		q := c.P50ms / g.P50ms
		add("WAN, concurrency 16: C p50 <= 0.4x G p50", q <= 0.4, "%.2fx (C %.2f ms, G %.2f ms)", q, c.P50ms, g.P50ms)
	}
	if c, b2 := find(rows, "C-1B", p, 16), find(rows, "C-2B", p, 16); c != nil && b2 != nil {
		r := b2.RPS / c.RPS
		add("Two backends (least-inflight), concurrency 16: calls/s vs one backend (no target; for the record)", true, "%.2fx (%.0f vs %.0f calls/s)", r, b2.RPS, c.RPS)
	}
	if h, sl := find(rows, "C-HEDGE", p, 16), find(rows, "C-SLOW", p, 16); h != nil && sl != nil {
		add("One backend 200 ms slow, --hedge-methods echo --hedge-after 20ms: echo p99 < 60 ms", h.P99ms < 60, "p99 %.1f ms (without hedging %.1f ms)", h.P99ms, sl.P99ms)
	}
	for _, payload := range []string{"20B", "1KiB"} {
		if c, ty := find(rows, "C-T", payload, 64), find(rows, "T", payload, 64); c != nil && ty != nil && c.CPUPer10k > 0 {
			r := ty.CPUPer10k / c.CPUPer10k
			add(fmt.Sprintf("Typed call (bench.v1.Bench/Echo) <= 1.15x the gateway CPU of Call, %s, concurrency 64", payload), r <= 1.15,
				"%.2fx (%.3f vs %.3f CPU s per 10k calls)", r, ty.CPUPer10k, c.CPUPer10k)
		}
	}
	if mem != nil {
		add("<= 40 KiB gateway RSS per idle /ws client", mem.KiBPerIdleClient <= 40, "%.1f KiB", mem.KiBPerIdleClient)
		add("<= 2 KiB per pending call", mem.BytesPerPending <= 2048, "%.0f bytes", mem.BytesPerPending)
		ok := mem.PendingErrors == 0 && mem.PendingOK == int64(mem.Pending) && mem.Error == ""
		add("zero errors in both memory runs", ok, "%d of %d pending calls ok, %d errors %s", mem.PendingOK, mem.Pending, mem.PendingErrors, mem.Error)
	}
	return ts
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

func printMarkdown(w io.Writer, r Report) {
	fmt.Fprintf(w, "Machine: %s. Each cell: %s measured after a warm-up. Run took %s.\n\n", r.Machine, r.Duration, r.Took)
	fmt.Fprintln(w, "| case | payload | conc | calls/s | p50 ms | p99 ms | CPU s /10k calls | peak RSS MiB | errors | measured |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, row := range r.Rows {
		fmt.Fprintf(w, "| %s | %s | %d | %.0f | %.3f | %.3f | %.3f | %.1f | %d | %s |\n", row.Case, row.Payload, row.Concurrency,
			row.RPS, row.P50ms, row.P99ms, row.CPUPer10k, float64(row.PeakRSSKiB)/1024, row.Errors, row.Measured)
	}
	if m := r.Memory; m != nil {
		fmt.Fprintf(w, "\nMemory: %d idle /ws clients: +%d KiB RSS (%.1f KiB each). %d calls in flight (in_flight %d when measured): +%d KiB RSS (%.0f bytes each); %d ok, %d errors.\n",
			m.IdleClients, m.IdleRSSDeltaKiB, m.KiBPerIdleClient, m.Pending, m.PendingInFlightAt, m.PendingRSSDelta, m.BytesPerPending, m.PendingOK, m.PendingErrors)
	}
	fmt.Fprintln(w, "\n| target | measured | met |\n|---|---|---|")
	for _, t := range r.Targets {
		met := "missed"
		if t.Met {
			met = "met"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", t.Name, t.Measured, met)
	}
}
