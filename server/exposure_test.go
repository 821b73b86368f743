package server

// Tests of the second security review (issue "nothing held before
// authentication, every body bounded after inflating, no internals in
// client errors"): each reproduces a finding against the server in
// process, over real sockets. The memory findings are measured against the
// built binary (cmd/wsbridge/security_e2e_test.go).

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/typed/typedtest"
)

// hostGet is a GET of url with the Host header host.
func hostGet(t *testing.T, url, host string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Host = host
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The admin listener answers a Host it does not serve with 421, as the
// client listener does: a page that rebinds its name to 127.0.0.1 reads no
// stats, metrics or profiles. A Host that is an IP address is served
// (kubelet probes and Prometheus scrapes name the pod's IP; a rebinding
// page names its own DNS name).
func TestAdminListenerChecksTheHost(t *testing.T) {
	debug := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("profile")) })
	h := start(t, demoBackend(t), func(o *Options) { o.AdminAddr, o.AdminHandler = "127.0.0.1:0", debug })
	admin := "http://" + h.srv.AdminAddr().String()
	_, port, _ := strings.Cut(h.srv.AdminAddr().String(), ":")
	paths := []string{"/__stats", "/v1/stats", "/metrics", "/healthz", "/", "/debug/pprof/profile"}
	for _, path := range paths {
		if code := hostGet(t, admin+path, "rebound.example:"+port); code != http.StatusMisdirectedRequest {
			t.Errorf("admin %s for a rebound name: %d, want 421", path, code)
		}
		for _, host := range []string{"localhost:" + port, "127.0.0.1:" + port, "[::1]:" + port} {
			if code := hostGet(t, admin+path, host); code != 200 {
				t.Errorf("admin %s for %s: %d", path, host, code)
			}
		}
	}
	// --allowed-hosts holds on the admin listener too; an IP address
	// always passes there.
	h2 := start(t, demoBackend(t), func(o *Options) {
		o.AdminAddr, o.AdminHandler, o.AllowedHosts = "127.0.0.1:0", debug, []string{"*.example.com"}
	})
	admin2 := "http://" + h2.srv.AdminAddr().String()
	for host, want := range map[string]int{"api.example.com": 200, "10.0.3.7:9091": 200, "127.0.0.1": 200, "rebound.example": 421, "localhost": 421} {
		if code := hostGet(t, admin2+"/metrics", host); code != want {
			t.Errorf("admin with --allowed-hosts, Host %s: %d, want %d", host, code, want)
		}
	}
}

// typedHoldOptions serves demoProto with an rpc that the scripted backend never
// answers, and its REST route.
func typedHoldOptions(t *testing.T) func(*Options) {
	t.Helper()
	proto := strings.Replace(demoProto, "rpc Echo(Payload) returns (Payload);",
		"rpc Echo(Payload) returns (Payload);\n  rpc Hold(Payload) returns (Payload) { option (wsbridge.v1.jsonrpc) = {method: \"hold\"}; }", 1)
	set := typedtest.CompileSet(t, map[string]string{"demo/v1/demo.proto": proto}, []string{"../proto"}, "demo/v1/demo.proto")
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	extra := "    - selector: demo.v1.Demo.Hold\n      post: /v1/demo/hold\n      body: \"*\"\n"
	if err := os.WriteFile(rules, []byte(demoRules+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(o *Options) { o.DescriptorSets, o.HTTPRules = []string{set}, rules }
}

// everyFace calls method (typed: the demo.v1.Demo rpc mapped to it) once
// on every face at the same time, runs inFlight (if set) once the backend
// has them all, and returns what each client read of its failure.
func everyFace(t *testing.T, h *harness, method, rpc string, inFlight func()) map[string]string {
	t.Helper()
	ctx := ctxT(t)
	before := h.srv.Bridge().Stats().MessagesOut
	httpText := func(path, body string, header http.Header) string {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	ws, _, err := websocket.Dial(ctx, strings.Replace(h.base, "http://", "ws://", 1)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	session, err := h.bridge.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	frame := `{"jsonrpc":"2.0","id":1,"method":"` + method + `"}`
	faces := map[string]func() string{
		"gRPC Call": func() string {
			_, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: method})
			return fmt.Sprint(err)
		},
		"REST": func() string { return httpText("/v1/call/"+method, `[]`, nil) },
		"/rpc": func() string { return httpText("/rpc", frame, nil) },
		"typed REST": func() string {
			return httpText("/v1/demo/"+strings.ToLower(rpc), `{}`, nil)
		},
		"typed Connect": func() string {
			return httpText("/demo.v1.Demo/"+rpc, `{}`, http.Header{"Connect-Protocol-Version": {"1"}})
		},
		"typed gRPC": func() string {
			return fmt.Sprint(h.conn.Invoke(ctx, "/demo.v1.Demo/"+rpc, &wsbridgev1.CallRequest{}, &wsbridgev1.CallResponse{}))
		},
		"/ws": func() string {
			if err := ws.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
				return err.Error()
			}
			_, b, err := ws.Read(ctx)
			if err != nil {
				return err.Error()
			}
			return string(b)
		},
		"Session": func() string {
			if err := session.Send(&wsbridgev1.SessionRequest{Id: "1", Method: method}); err != nil {
				return err.Error()
			}
			resp, err := session.Recv()
			if err != nil {
				return err.Error()
			}
			return resp.String()
		},
	}
	var mu sync.Mutex
	got := map[string]string{}
	var wg sync.WaitGroup
	for name, f := range faces {
		wg.Go(func() {
			text := f()
			mu.Lock()
			got[name] = text
			mu.Unlock()
		})
	}
	if inFlight != nil {
		bridgetest.Eventually(t, "every face's call to reach the backend", func() bool {
			return h.srv.Bridge().Stats().MessagesOut >= before+uint64(len(faces))
		})
		inFlight()
	}
	wg.Wait()
	return got
}

// Clients learn what happened (backend unavailable, and when the next dial
// comes; the connection lost after the request was written) with the
// reason, never the backend's address or the transport's own words, which
// go to the logs and the stats only. Every face, typed rpcs and stream
// ends included.
func TestClientErrorsNameNoAddress(t *testing.T) {
	t.Run("unavailable", func(t *testing.T) {
		dead := bridgetest.NewServer(t, nil)
		dead.Stop()
		h := start(t, dead.URL(), typedHoldOptions(t))
		got := everyFace(t, h, "echo", "Add", nil)
		stream, err := h.conn.NewStream(ctxT(t), &grpc.StreamDesc{ServerStreams: true}, "/demo.v1.Demo/Ticks")
		if err == nil {
			err = stream.SendMsg(&wsbridgev1.CallRequest{})
		}
		if err == nil {
			err = stream.RecvMsg(&wsbridgev1.CallResponse{})
		}
		got["typed stream end"] = fmt.Sprint(err)
		for face, text := range got {
			if strings.Contains(text, dead.Addr()) || strings.Contains(text, "dial tcp") || strings.Contains(text, "refused") {
				t.Errorf("%s shows the transport: %s", face, text)
			}
			if !strings.Contains(text, "backend unavailable (next dial in") || jsonFace(face) && !strings.Contains(strings.ToLower(text), `"reason":"unavailable"`) {
				t.Errorf("%s does not say the backend is unavailable, and why: %s", face, text)
			}
		}
		st, err := h.stats.GetStats(ctxT(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(st.String(), dead.Addr()) {
			t.Errorf("the stats lost the dial error: %s", st)
		}
	})
	t.Run("reply lost", func(t *testing.T) {
		fb := bridgetest.NewServer(t, (&idLog{ids: map[string]int{}}).scripted)
		proxy := newResetProxy(t, fb.Addr())
		h := start(t, "ws://"+proxy.addr()+"/", typedHoldOptions(t))
		got := everyFace(t, h, "hold", "Hold", proxy.reset)
		for face, text := range got {
			if strings.Contains(text, "127.0.0.1") || strings.Contains(text, "tcp") || strings.Contains(text, "reset by peer") {
				t.Errorf("%s shows the transport: %s", face, text)
			}
			if !strings.Contains(text, "backend connection lost after the request was written") || jsonFace(face) && !strings.Contains(strings.ToLower(text), `"reason":"reply_lost"`) {
				t.Errorf("%s does not say the reply was lost, and why: %s", face, text)
			}
		}
	})
}

// jsonFace reports whether a face of everyFace shows the reason of an
// UNAVAILABLE in its text (gRPC clients get it as a status detail).
func jsonFace(face string) bool {
	return face == "REST" || face == "/rpc" || face == "/ws" || face == "typed REST" || face == "typed Connect"
}

// resetProxy forwards TCP connections to a backend until reset, which
// closes them with a TCP reset: the gateway's next read fails with
// "read tcp <its address>-><proxy's>: connection reset by peer".
type resetProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []*net.TCPConn
}

func newResetProxy(t *testing.T, target string) *resetProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resetProxy{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); p.reset(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c.(*net.TCPConn), b.(*net.TCPConn))
			p.mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(b, c); b.Close() })
			wg.Go(func() { _, _ = io.Copy(c, b); c.Close() })
		}
	})
	return p
}

func (p *resetProxy) addr() string { return p.ln.Addr().String() }

func (p *resetProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.SetLinger(0)
		_ = c.Close()
	}
	p.conns = nil
}

// settingsOf returns the HTTP/2 SETTINGS a listener sends first.
func settingsOf(t *testing.T, conn net.Conn) map[http2.SettingID]uint32 {
	t.Helper()
	defer conn.Close()
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	f, err := fr.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok {
		t.Fatalf("first frame %v", f)
	}
	got := map[http2.SettingID]uint32{}
	_ = sf.ForeachSetting(func(s http2.Setting) error { got[s.ID] = s.Val; return nil })
	return got
}

// Every listener bounds a request's headers the same way (MaxHeaderBytes,
// 64 KiB by default): gRPC advertises and enforces the header list limit,
// HTTP/1.1 answers 431, HTTP/2 on the HTTP listener advertises the limit,
// and the HPACK tables stay at 4 KiB.
func TestEveryListenerBoundsHeaders(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.AdminAddr = "127.0.0.1:0" })
	big, fits := strings.Repeat("h", 100<<10), strings.Repeat("h", 32<<10)
	for name, url := range map[string]string{"HTTP": h.base + "/openapi.json", "admin": "http://" + h.srv.AdminAddr().String() + "/healthz"} {
		if code, _ := httpDo(t, http.MethodGet, url, "", http.Header{"X-Big": {big}}); code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%s listener, 100 KiB header: %d, want 431", name, code)
		}
		if code, _ := httpDo(t, http.MethodGet, url, "", http.Header{"X-Big": {fits}}); code != 200 {
			t.Errorf("%s listener, 32 KiB header: %d", name, code)
		}
	}
	conn, err := net.Dial("tcp", h.srv.GRPCAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	if got := settingsOf(t, conn)[http2.SettingMaxHeaderListSize]; got != 64<<10 {
		t.Errorf("gRPC SETTINGS_MAX_HEADER_LIST_SIZE %d, want 65536", got)
	}
	_, err = h.bridge.Call(metadata.AppendToOutgoingContext(ctxT(t), "x-big", big), &wsbridgev1.CallRequest{Method: "echo"})
	if status.Code(err) == codes.OK {
		t.Errorf("gRPC, 100 KiB of metadata: served")
	}
	t.Logf("gRPC, 100 KiB of metadata: %v", err)
	if _, err := h.bridge.Call(metadata.AppendToOutgoingContext(ctxT(t), "x-big", fits), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Errorf("gRPC, 32 KiB of metadata: %v", err)
	}

	cert, pool := selfSigned(t)
	ht := startTLS(t, demoBackend(t), &tls.Config{Certificates: []tls.Certificate{cert}})
	tc, err := tls.Dial("tcp", ht.srv.HTTPAddr().String(), &tls.Config{RootCAs: pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q", p)
	}
	s := settingsOf(t, tc)
	if got := s[http2.SettingMaxHeaderListSize]; got == 0 || got > 72<<10 {
		t.Errorf("HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE %d, want about 64 KiB", got)
	}
	if got, ok := s[http2.SettingHeaderTableSize]; ok && got > 4096 {
		t.Errorf("HTTP/2 SETTINGS_HEADER_TABLE_SIZE %d", got)
	}
}

// rawGRPCConn opens a connection to the gRPC listener that says the
// HTTP/2 preface and SETTINGS, then (when partial) starts a header block
// it never ends, and nothing more. ended is closed when the gateway has
// closed the connection.
func rawGRPCConn(t *testing.T, addr string, partial bool) (ended chan struct{}) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fr := http2.NewFramer(conn, conn)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	if partial {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x83}}); err != nil { // :method POST
			t.Fatal(err)
		}
	}
	ended = make(chan struct{})
	go func() {
		defer close(ended)
		_, _ = io.Copy(io.Discard, conn)
	}()
	return ended
}

// Issue 19, item 7: with tokens, a gRPC connection that has not
// authenticated an RPC is closed once it has carried no RPC for
// UnauthenticatedIdle: bare connections, a header block that never ends,
// a connection whose calls were refused. One that serves a tokenless
// health watch stays while the watch runs; an authenticated connection
// stays however idle. (The review held 4,000 idle tokenless connections,
// about 87 MB, none ever closed.)
func TestIdleTokenlessConnectionsAreClosed(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) {
		o.Auth = tokens{"s3cret": true}
		o.UnauthenticatedIdle = 200 * time.Millisecond
	})
	addr := h.srv.GRPCAddr().String()
	if _, err := h.bridge.Call(withToken(ctxT(t), "s3cret"), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	watcher := grpcConn(t, h)
	watchCtx, stopWatch := context.WithCancel(ctxT(t))
	defer stopWatch()
	watch, err := healthpb.NewHealthClient(watcher).Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = watch.Recv()
	}
	if err != nil {
		t.Fatal(err)
	}
	refused := grpcConn(t, h)
	if _, err := wsbridgev1.NewBridgeServiceClient(refused).Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.Unauthenticated {
		t.Fatal(err)
	}
	var idle []chan struct{}
	for i := range 50 {
		idle = append(idle, rawGRPCConn(t, addr, i%2 == 1))
	}
	for i, ended := range idle {
		select {
		case <-ended:
		case <-ctxT(t).Done():
			t.Fatalf("tokenless connection %d (partial header block: %v) still open", i, i%2 == 1)
		}
	}
	if !refused.WaitForStateChange(ctxT(t), connectivity.Ready) {
		t.Fatal("the connection whose call was refused is still open")
	}
	// The authenticated connection, older than all of these, is still
	// the one it was; so is the watcher's.
	if st := h.conn.GetState(); st != connectivity.Ready {
		t.Fatalf("the authenticated connection: %v", st)
	}
	if st := watcher.GetState(); st != connectivity.Ready {
		t.Fatalf("the tokenless connection with a watch running: %v", st)
	}
	stopWatch()
	if !watcher.WaitForStateChange(ctxT(t), connectivity.Ready) {
		t.Fatal("the watcher's connection stayed open once idle")
	}
	if st := h.conn.GetState(); st != connectivity.Ready {
		t.Fatalf("the authenticated connection: %v", st)
	}
	if _, err := h.bridge.Call(withToken(ctxT(t), "s3cret"), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatal(err)
	}
}
