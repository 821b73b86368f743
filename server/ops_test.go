package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	"github.com/wsbridge/wsbridge/gen/openapiv2"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestPrometheusMetrics(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.MetricsMethods = []string{"add"} })
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "add", Params: value(t, `[1,2]`)}); err != nil {
		t.Fatal(err)
	}
	post(t, h.base+"/v1/call/echo", `[1]`, nil)
	post(t, h.base+"/v1/call/fail", `{"code":-32601,"message":"x"}`, nil)
	c := dialWS(t, h)
	c.roundTrip("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"secret-\\u00e9-name\"}")
	code, body := get(t, h.base+"/metrics")
	if code != 200 {
		t.Fatalf("HTTP %d", code)
	}
	for _, want := range []string{
		`wsbridge_requests_handled_total 4`,
		`wsbridge_grpc_calls_total 1`,
		`wsbridge_http_proxied_total 2`,
		`wsbridge_backend_connects_total 1`,
		`wsbridge_backend_state{state="connected"} 1`,
		`wsbridge_backend_state{state="backoff"} 0`,
		`wsbridge_in_flight 0`,
		`wsbridge_pending_calls 0`,
		`wsbridge_call_duration_seconds_count{code="OK",face="grpc",method="add"} 1`,
		`wsbridge_call_duration_seconds_count{code="OK",face="rest",method="other"} 1`,
		`wsbridge_call_duration_seconds_count{code="Unimplemented",face="rest",method="other"} 1`,
		`wsbridge_call_duration_seconds_count{code="Unimplemented",face="ws",method="other"} 1`,
		`wsbridge_backend_messages_total{direction="received"} 4`,
		`wsbridge_backend_messages_total{direction="sent"} 4`,
		`wsbridge_backend_errors_by_class_total{class="method_not_found"} 2`, // fail -32601, and the /ws call to no such method
		`wsbridge_backend_errors_by_class_total{class="invalid_params"} 0`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(body, "secret") {
		t.Error("a client-supplied method name became a label")
	}
}

// Without --metrics-methods, the allow list's methods are labels: its
// names, and the names its patterns match up to a bound; others "other".
func TestMetricsMethodsFromAllowList(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.Bridge.AllowMethods = []string{"add", "e*", "fail"} })
	for _, m := range []string{"add", "echo", "fail"} {
		post(t, h.base+"/v1/call/"+m, `[1,2]`, nil)
	}
	post(t, h.base+"/v1/call/sleep", `[1]`, nil) // denied: not in the list
	m := h.srv.counters.metrics
	for i := range maxPatternMethods + 10 {
		m.label(fmt.Sprintf("e%d", i))
	}
	_, body := get(t, h.base+"/metrics")
	for _, want := range []string{`face="rest",method="add"} 1`, `face="rest",method="echo"} 1`, `code="InvalidArgument",face="rest",method="fail"} 1`,
		`code="PermissionDenied",face="rest",method="other"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if n := m.patternCount.Load(); n != maxPatternMethods || m.label("e-one-more") != "other" || m.label("echo") != "echo" {
		t.Errorf("%d methods admitted by patterns; a new one is %q", n, m.label("e-one-more"))
	}
}

func TestWatchStats(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	stream, err := h.stats.WatchStats(ctxT(t), &wsbridgev1.WatchStatsRequest{Interval: durationpb.New(100 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	for {
		st, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if st.RequestsHandled > first.RequestsHandled {
			break
		}
	}
	// REST: newline-delimited JSON.
	resp, err := http.Get(h.base + "/v1/stats:watch?interval=0.1s")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for range 2 {
		if !sc.Scan() {
			t.Fatalf("stream ended: %v", sc.Err())
		}
		var line struct {
			Result struct {
				InstanceID string `json:"instanceId"`
			} `json:"result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line.Result.InstanceID == "" {
			t.Fatalf("line %s: %v", sc.Bytes(), err)
		}
	}
	_, err = h.stats.WatchStats(ctxT(t), &wsbridgev1.WatchStatsRequest{Interval: durationpb.New(time.Millisecond)})
	if err == nil {
		s, _ := h.stats.WatchStats(ctxT(t), &wsbridgev1.WatchStatsRequest{Interval: durationpb.New(time.Millisecond)})
		if _, err := s.Recv(); err == nil {
			t.Fatal("a 1 ms interval was accepted")
		}
	}
}

func TestOpenAPI(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	code, body := get(t, h.base+"/openapi.json")
	if code != 200 {
		t.Fatalf("HTTP %d", code)
	}
	onDisk, err := os.ReadFile("../gen/openapiv2/wsbridge.swagger.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal([]byte(body), onDisk) || !bytes.Equal(openapiv2.Spec, onDisk) {
		t.Fatal("/openapi.json differs from the generated file")
	}
	var spec struct {
		Swagger string                                `json:"swagger"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal([]byte(body), &spec); err != nil || spec.Swagger != "2.0" {
		t.Fatalf("not an OpenAPI 2.0 document: %v", err)
	}
	for path, verb := range map[string]string{"/v1/call": "post", "/v1/call/{method}": "post", "/v1/notify": "post",
		"/v1/stats": "get", "/v1/stats:watch": "get", "/v1/subscribe": "get"} {
		if spec.Paths[path][verb] == nil {
			t.Errorf("the spec lacks %s %s", strings.ToUpper(verb), path)
		}
		// And the route is served.
		req, _ := http.NewRequest(strings.ToUpper(verb), h.base+strings.Replace(path, "{method}", "echo", 1), strings.NewReader(`{"method":"echo"}`))
		req.Header.Set("Content-Type", "application/json")
		if strings.Contains(path, "watch") || strings.Contains(path, "subscribe") {
			continue // streams; covered elsewhere
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
			t.Errorf("%s %s: HTTP %d", verb, path, resp.StatusCode)
		}
	}
}

// The dashboard's files are served from the binary, and every element the
// script writes exists on the page. (The page's behaviour is tested in a real
// browser by the browser/ module.)
func TestDashboardFiles(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	code, page := get(t, h.base+"/")
	if code != 200 || !strings.Contains(page, `<script src="/dashboard.js">`) {
		t.Fatalf("GET /: HTTP %d", code)
	}
	code, script := get(t, h.base+"/dashboard.js")
	if code != 200 || !strings.Contains(script, `fetch("/v1/stats"`) {
		t.Fatalf("GET /dashboard.js: HTTP %d", code)
	}
	if code, _ := get(t, h.base+"/dashboard.css"); code != 200 {
		t.Fatalf("GET /dashboard.css: HTTP %d", code)
	}
	for _, m := range regexp.MustCompile(`\$\("([a-z0-9-]+)"\)`).FindAllStringSubmatch(script, -1) {
		if !strings.Contains(page, `id="`+m[1]+`"`) {
			t.Errorf("dashboard.js writes #%s, which index.html lacks", m[1])
		}
	}
	if code, _ := get(t, h.base+"/index.html"); code != http.StatusNotFound {
		t.Errorf("GET /index.html: HTTP %d, want 404 (only / serves the page)", code)
	}
}

// With an admin listener the operational routes move there, served with
// no token; the client port serves none of them. Readiness on it turns
// 503 when the drain starts, while the admin listener still answers.
func TestAdminListener(t *testing.T) {
	tf := tokenAuth(t, "s3cret")
	h := start(t, demoBackend(t), func(o *Options) {
		o.AdminAddr, o.Auth, o.ShutdownDelay = "127.0.0.1:0", tf, 300*time.Millisecond
		o.AdminHandler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("debug")) })
	})
	admin := "http://" + h.srv.AdminAddr().String()
	token := http.Header{"Authorization": {"Bearer s3cret"}}
	for _, path := range []string{"/metrics", "/healthz", "/readyz", "/livez", "/__stats", "/v1/stats", "/", "/dashboard.js", "/dashboard-schema.json", "/debug/pprof/"} {
		if code, body := httpDo(t, http.MethodGet, admin+path, "", nil); code != 200 {
			t.Errorf("admin %s: %d %.100s", path, code, body)
		}
		if path == "/debug/pprof/" {
			continue
		}
		if code, _ := httpDo(t, http.MethodGet, h.base+path, "", token); code != http.StatusNotFound {
			t.Errorf("client port %s: %d, want 404", path, code)
		}
	}
	// The API stays on the client port, behind the token.
	if code, _ := httpDo(t, http.MethodPost, h.base+"/v1/call/add", `[1,2]`, http.Header{"Content-Type": {"application/json"}}); code != http.StatusUnauthorized {
		t.Errorf("client call without a token: %d", code)
	}
	if code, body := httpDo(t, http.MethodPost, h.base+"/v1/call/add", `[1,2]`, http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer s3cret"}}); code != 200 {
		t.Errorf("client call: %d %s", code, body)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- h.stop() }()
	bridgetest.Eventually(t, "readiness 503 on the admin port during the drain", func() bool {
		code, _ := httpDo(t, http.MethodGet, admin+"/readyz", "", nil)
		return code == http.StatusServiceUnavailable
	})
	if code, _ := httpDo(t, http.MethodGet, admin+"/livez", "", nil); code != 200 {
		t.Errorf("liveness during the drain: %d", code)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
