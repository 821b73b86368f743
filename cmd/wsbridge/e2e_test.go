package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// proc is a wsbridge process started the way a user starts it, logging
// JSON to stderr.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	logs chan map[string]any
	done chan struct{} // closed when the log reader has finished
	mu   sync.Mutex
	all  []string
}

func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, append(args, "--log-format", "json", "--log-level", "debug")...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, logs: make(chan map[string]any, 10000), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.all = append(p.all, line)
			p.mu.Unlock()
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil {
				select {
				case p.logs <- m:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			<-p.done
		}
		if t.Failed() {
			p.mu.Lock()
			t.Logf("%s logs:\n%s", args[0], strings.Join(p.all, "\n"))
			p.mu.Unlock()
		}
	})
	return p
}

// waitLog returns the next log record whose msg is msg.
func (p *proc) waitLog(msg string) map[string]any {
	p.t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case m := <-p.logs:
			if m["msg"] == msg {
				return m
			}
		case <-timeout:
			p.t.Fatalf("no log %q", msg)
		}
	}
}

// signal sends sig and returns the exit code.
func (p *proc) signal(sig syscall.Signal) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	<-p.done
	err := p.cmd.Wait()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		p.t.Fatal(err)
	}
	return 0
}

type gateway struct {
	*proc
	grpcAddr, httpAddr string
	adminAddr          string // with --admin-addr
	conn               *grpc.ClientConn
	bridge             wsbridgev1.BridgeServiceClient
	stats              wsbridgev1.StatsServiceClient
}

func startGateway(t *testing.T, args ...string) *gateway {
	t.Helper()
	p := startProc(t, append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...)...)
	ready := p.waitLog("wsbridge listening")
	g := &gateway{proc: p, grpcAddr: ready["grpc"].(string), httpAddr: ready["http"].(string)}
	g.adminAddr, _ = ready["admin"].(string)
	conn, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	g.conn = conn
	g.bridge = wsbridgev1.NewBridgeServiceClient(conn)
	g.stats = wsbridgev1.NewStatsServiceClient(conn)
	return g
}

func (g *gateway) getStats(t *testing.T) *wsbridgev1.Stats {
	t.Helper()
	st, err := g.stats.GetStats(ctxT(t), &wsbridgev1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func params(t *testing.T, js string) *structpb.Value {
	var v structpb.Value
	if err := v.UnmarshalJSON([]byte(js)); err != nil {
		t.Fatal(err)
	}
	return &v
}

func TestServeWithEmbeddedBackend(t *testing.T) {
	g := startGateway(t, "--demo")

	// Reflection lists every service, as `grpcurl list` shows.
	rc, err := reflectionpb.NewServerReflectionClient(g.conn).ServerReflectionInfo(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := rc.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var services []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		services = append(services, s.Name)
	}
	_ = rc.CloseSend()
	for _, want := range []string{"wsbridge.v1.BridgeService", "wsbridge.v1.StatsService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
		if !slices.Contains(services, want) {
			t.Errorf("reflection lists %v, missing %s", services, want)
		}
	}

	h, err := healthpb.NewHealthClient(g.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health %v %v", h, err)
	}

	res, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "add", Params: params(t, `[20,22]`)})
	if err != nil || res.Result.GetNumberValue() != 42 {
		t.Fatalf("gRPC add: %v %v", res, err)
	}
	httpResp, err := http.Post("http://"+g.httpAddr+"/v1/call", "application/json", strings.NewReader(`{"method":"echo","params":{"hello":"world"}}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(httpResp.Body)
	httpResp.Body.Close()
	if httpResp.StatusCode != 200 || !strings.Contains(string(body), `"hello":"world"`) {
		t.Fatalf("REST: %d %s", httpResp.StatusCode, body)
	}

	statsResp, err := http.Get("http://" + g.httpAddr + "/__stats")
	if err != nil {
		t.Fatal(err)
	}
	var seed map[string]any
	_ = json.NewDecoder(statsResp.Body).Decode(&seed)
	statsResp.Body.Close()
	if seed["requestsHandled"] != 2.0 || seed["httpProxied"] != 1.0 || seed["backendConnects"] != 1.0 || seed["backendConnected"] != true {
		t.Fatalf("/__stats %v", seed)
	}
	if st := g.getStats(t); st.GrpcCalls != 1 || st.RequestsHandled != 2 || st.InstanceId != seed["isolateId"] {
		t.Fatalf("GetStats %v", st)
	}

	if code := g.signal(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
	g.waitLog("shutdown complete")
}

// startBackend runs `wsbridge backend` and returns it with its URL.
func startBackend(t *testing.T, listen string) (*proc, string) {
	t.Helper()
	p := startProc(t, "backend", "--listen", listen)
	return p, p.waitLog("demo backend listening")["url"].(string)
}

func TestBackendLossAndReturn(t *testing.T) {
	be, url := startBackend(t, "127.0.0.1:0")
	g := startGateway(t, "--backend", url)

	// 100 concurrent first calls share one dial.
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Go(func() {
			_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Params: params(t, fmt.Sprintf("[%d]", i))})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	baseline := g.getStats(t)
	if baseline.BackendConnects != 1 {
		t.Fatalf("100 first calls made %d dials, want 1", baseline.BackendConnects)
	}

	// 1,000 calls in flight, then the backend process dies.
	const n = 1000
	type outcome struct {
		code codes.Code
		at   time.Time
	}
	out := make(chan outcome, n)
	for range n {
		go func() {
			_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: params(t, `{"ms":25000}`)})
			out <- outcome{status.Code(err), time.Now()}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := g.getStats(t)
		// 100 echo round trips, then 500 requests written.
		if st.InFlight == n && st.MessagesProxied == 200+n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls never all in flight: %v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	killed := time.Now()
	be.signal(syscall.SIGKILL)
	for range n {
		o := <-out
		if o.code != codes.Unavailable {
			t.Fatalf("a call in flight at the kill ended with %v, want UNAVAILABLE", o.code)
		}
		if d := o.at.Sub(killed); d > time.Second {
			t.Fatalf("a call ended %v after the kill, want within 1s", d)
		}
	}
	if st := g.getStats(t); st.BackendConnected || st.InFlight != 0 {
		t.Fatalf("after the kill: %v", st)
	}

	// The backend returns on the same address; the next call redials.
	startBackend(t, strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/"))
	var res *wsbridgev1.CallResponse
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		// Calls may fail fast while the gateway backs off after a failed dial.
		res, err = g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "counter", WaitForReady: true})
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Result.GetNumberValue() != 1 {
		t.Fatalf("counter %v: the call did not reach the restarted backend first", res.Result)
	}
	if st := g.getStats(t); st.BackendReconnects != 1 || st.BackendConnects != 2 {
		t.Fatalf("reconnects %d connects %d, want 1 and 2", st.BackendReconnects, st.BackendConnects)
	}
	// The gateway's goroutines are back to where they were before the load.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := g.getStats(t)
		if st.Goroutines <= baseline.Goroutines+2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway goroutines %d, %d before the load", st.Goroutines, baseline.Goroutines)
		}
	}
}

func TestUnreachableBackendFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	g := startGateway(t, "--backend", "ws://"+addr+"/")
	ctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
	defer cancel()
	_, err = g.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "echo"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("call to an unreachable backend: %v, want UNAVAILABLE (not a hang)", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the call used up its whole deadline")
	}
	if st := g.getStats(t); st.BackendConnected || st.DialFailures == 0 {
		t.Fatalf("stats %v", st)
	}
	if code := g.signal(syscall.SIGINT); code != 0 {
		t.Fatalf("exit %d after SIGINT", code)
	}
}

type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
}

func dialWS(t *testing.T, g *gateway) *wsClient {
	t.Helper()
	conn, _, err := websocket.Dial(ctxT(t), "ws://"+g.httpAddr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	return &wsClient{t, conn}
}

func (c *wsClient) call(frame string) string {
	c.t.Helper()
	if err := c.conn.Write(ctxT(c.t), websocket.MessageText, []byte(frame)); err != nil {
		c.t.Fatal(err)
	}
	return c.next()
}

func (c *wsClient) next() string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, b, err := c.conn.Read(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	return string(b)
}

// nextNot skips notifications of method skip (queued before the event).
func (c *wsClient) nextNot(skip string) string {
	c.t.Helper()
	for {
		if m := c.next(); !strings.Contains(m, `"method":"`+skip+`"`) {
			return m
		}
	}
}

// Two /ws clients subscribe; each gets only its own notifications. Killing
// the backend ends both subscriptions explicitly; with --resubscribe they
// resume, after a wsbridge_gap, under the ids the clients know.
func TestSubscriptionsAcrossBackendRestart(t *testing.T) {
	for _, resubscribe := range []bool{false, true} {
		t.Run(fmt.Sprintf("resubscribe=%v", resubscribe), func(t *testing.T) {
			be, url := startBackend(t, "127.0.0.1:0")
			args := []string{"--backend", url, "--backoff-base", "50ms"}
			if resubscribe {
				args = append(args, "--resubscribe")
			}
			g := startGateway(t, args...)
			a, b := dialWS(t, g), dialWS(t, g)
			subA := strings.TrimSuffix(strings.SplitN(a.call(`{"jsonrpc":"2.0","id":1,"method":"demo_subscribe","params":[20]}`), `"result":`, 2)[1], "}")
			subB := strings.TrimSuffix(strings.SplitN(b.call(`{"jsonrpc":"2.0","id":1,"method":"demo_subscribe","params":[25]}`), `"result":`, 2)[1], "}")
			if subA == subB || !strings.HasPrefix(subA, `"0x`) {
				t.Fatalf("subscription ids %s and %s", subA, subB)
			}
			for range 3 {
				if m := a.next(); !strings.Contains(m, `"subscription":`+subA) {
					t.Fatalf("a got %s", m)
				}
				if m := b.next(); !strings.Contains(m, `"subscription":`+subB) {
					t.Fatalf("b got %s", m)
				}
			}
			be.signal(syscall.SIGKILL)
			if !resubscribe {
				for c, sub := range map[*wsClient]string{a: subA, b: subB} {
					m := c.nextNot("demo_subscription")
					if !strings.Contains(m, `"method":"wsbridge_subscriptionLost"`) || !strings.Contains(m, `"subscription":`+sub) {
						t.Fatalf("after the kill: %s", m)
					}
				}
				return
			}
			// Each client hears of the gap at once, while the backend is
			// still down: nobody waits in silence.
			for c, sub := range map[*wsClient]string{a: subA, b: subB} {
				m := c.nextNot("demo_subscription")
				if !strings.HasPrefix(m, `{"jsonrpc":"2.0","method":"wsbridge_gap","params":{`) || !strings.Contains(m, `"subscription":`+sub) ||
					!strings.Contains(m, `"reason":"backend connection lost`) {
					t.Fatalf("after the kill: %s", m)
				}
			}
			startBackend(t, strings.TrimSuffix(strings.TrimPrefix(url, "ws://"), "/"))
			for c, sub := range map[*wsClient]string{a: subA, b: subB} {
				if m := c.next(); !strings.Contains(m, `"method":"demo_subscription"`) || !strings.Contains(m, `"subscription":`+sub) {
					t.Fatalf("resumed: %s", m)
				}
			}
			if st := g.getStats(t); st.Resubscribes != 2 || st.Subscriptions != 2 {
				t.Fatalf("stats %v", st)
			}
		})
	}
}

// Scenario 11: SIGTERM with 500 calls in flight. Readiness turns
// NOT_SERVING at once and new calls soon get UNAVAILABLE; the calls in flight
// drain; /ws clients get 1001; the process exits 0 within the grace + 1 s.
// Calls longer than the grace are cut with UNAVAILABLE.
func TestScenario11GracefulShutdown(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sleepMS int
		want    codes.Code
	}{{"drains", 500, codes.OK}, {"cut at the grace", 20000, codes.Unavailable}} {
		t.Run(tc.name, func(t *testing.T) {
			g := startGateway(t, "--demo", "--shutdown-grace", "2s")
			ws := dialWS(t, g)
			ws.call(`{"jsonrpc":"2.0","id":1,"method":"echo"}`)
			watch, err := healthpb.NewHealthClient(g.conn).Watch(ctxT(t), &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health before: %v %v", r, err)
			}
			const n = 500
			out := make(chan codes.Code, n)
			for range n {
				go func() {
					_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "sleep", Params: params(t, fmt.Sprintf("[%d]", tc.sleepMS))})
					out <- status.Code(err)
				}()
			}
			for deadline := time.Now().Add(20 * time.Second); g.getStats(t).InFlight != n; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the calls never got in flight")
				}
			}
			start := time.Now()
			if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("health at SIGTERM: %v %v", r, err)
			}
			// New calls are served until the client has the GOAWAY, then
			// refused with UNAVAILABLE; nothing else, and no hang.
			for {
				_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
				if status.Code(err) == codes.Unavailable {
					break
				}
				if err != nil {
					t.Fatalf("a new call during shutdown: %v", err)
				}
			}
			for range n {
				if code := <-out; code != tc.want {
					t.Fatalf("a call in flight at SIGTERM ended with %v, want %v", code, tc.want)
				}
			}
			_, _, err = ws.conn.Read(ctxT(t))
			if websocket.CloseStatus(err) != websocket.StatusGoingAway {
				t.Fatalf("/ws client: %v, want 1001", err)
			}
			<-g.done
			if err := g.cmd.Wait(); err != nil {
				t.Fatalf("exit: %v", err)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Fatalf("exit %v after SIGTERM with a 2s grace", el)
			}
		})
	}
}

// A second SIGTERM (or SIGINT) during the shutdown exits at once, without
// waiting for the calls in flight (here for a grace of a minute).
func TestSecondSignalExitsAtOnce(t *testing.T) {
	g := startGateway(t, "--demo", "--shutdown-grace", "1m")
	go func() {
		_, _ = g.bridge.Call(context.Background(), &wsbridgev1.CallRequest{Method: "sleep", Params: params(t, "[60000]")})
	}()
	for deadline := time.Now().Add(20 * time.Second); g.getStats(t).InFlight != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the call never got in flight")
		}
	}
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	g.waitLog("shutting down")
	if code := g.signal(syscall.SIGINT); code != 1 {
		t.Fatalf("exit code %d after a second signal, want 1", code)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !strings.Contains(strings.Join(g.all, "\n"), "second signal") {
		t.Fatalf("no word of the second signal:\n%s", strings.Join(g.all, "\n"))
	}
}

// cli runs the built binary with args and returns stdout, stderr and the
// exit code.
func cli(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func TestCLI(t *testing.T) {
	g := startGateway(t, "--demo")
	out, errOut, code := cli(t, "call", "--grpc-addr", g.grpcAddr, "add", "[2,3]")
	if code != 0 || strings.TrimSpace(out) != "5" {
		t.Fatalf("call add: %d %q %q", code, out, errOut)
	}
	out, _, code = cli(t, "call", "--grpc-addr", g.grpcAddr, "echo", `{"a":[1,"x"]}`)
	if code != 0 || !strings.Contains(out, `"a": [`) {
		t.Fatalf("call echo: %d %q", code, out)
	}
	_, errOut, code = cli(t, "call", "--grpc-addr", g.grpcAddr, "fail", `{"code":-32601,"message":"nope","data":{"k":1}}`)
	if code != 1 || !strings.Contains(errOut, "Unimplemented: nope") || !strings.Contains(errOut, "backend JSON-RPC error -32601") || !strings.Contains(errOut, `{"k":1}`) {
		t.Fatalf("call fail: %d %q", code, errOut)
	}
	_, errOut, code = cli(t, "call", "--grpc-addr", g.grpcAddr, "echo", `{not json`)
	if code != 2 || !strings.Contains(errOut, "not JSON") {
		t.Fatalf("bad params: %d %q", code, errOut)
	}
	if _, _, code := cli(t, "call", "--grpc-addr", g.grpcAddr, "--notify", "echo", `[1]`); code != 0 {
		t.Fatalf("notify: %d", code)
	}

	out, _, code = cli(t, "stats", "--grpc-addr", g.grpcAddr)
	if code != 0 || !regexp.MustCompile(`(?m)^  backend state +connected$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^  grpc calls +4$`).MatchString(out) || !regexp.MustCompile(`(?m)^  backend conns open +1$`).MatchString(out) {
		t.Fatalf("stats: %d\n%s", code, out)
	}
	out, _, code = cli(t, "stats", "--grpc-addr", g.grpcAddr, "--json")
	var st map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st["backendState"] != "BACKEND_STATE_CONNECTED" {
		t.Fatalf("stats --json: %d %q", code, out)
	}
	// --watch keeps printing until interrupted.
	cmd := exec.Command(binary, "stats", "--grpc-addr", g.grpcAddr, "--json", "--watch", "--interval", "100ms")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	for range 3 {
		if !sc.Scan() {
			t.Fatal("stats --watch stopped")
		}
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stats --watch after SIGINT: %v", err)
	}

	out, _, code = cli(t, "version")
	if code != 0 || !strings.HasPrefix(out, "wsbridge ") || !strings.Contains(out, "commit ") || !strings.Contains(out, "go1.") {
		t.Fatalf("version: %d %q", code, out)
	}
	_, errOut, code = cli(t, "stats", "--grpc-addr", "127.0.0.1:1")
	if code != 1 || !strings.Contains(errOut, "Unavailable") {
		t.Fatalf("stats against nothing: %d %q", code, errOut)
	}
}
