package server

import (
	"context"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// Each request written to a backend is in its latency histogram by
// outcome, and each failed one in its errors by class (the JSON-RPC code's
// class, or the transport reason); the series of every class exist from
// the start. The user's OnBackendRequest still runs, and the build info
// carries Options.Version and Commit.
func TestBackendRequestMetrics(t *testing.T) {
	url := demoBackend(t)
	var userCalls atomic.Int64
	h := start(t, url, func(o *Options) {
		o.Version, o.Commit = "v1.2.3", "abc123"
		o.Bridge.OnBackendRequest = func(string, time.Duration, error) { userCalls.Add(1) }
	})
	backend := bridge.DisplayURL(url)
	want := func(body string, lines ...string) []string {
		var missing []string
		for _, l := range lines {
			if !strings.Contains(body, l) {
				missing = append(missing, l)
			}
		}
		return missing
	}

	// Before any request: the zero series.
	_, body := get(t, h.base+"/metrics")
	if m := want(body,
		`wsbridge_backend_request_duration_seconds_count{backend="`+backend+`",outcome="ok"} 0`,
		`wsbridge_backend_request_errors_total{backend="`+backend+`",class="method_not_found"} 0`,
		`wsbridge_backend_request_errors_total{backend="`+backend+`",class="reply_lost"} 0`,
		`wsbridge_backend_request_errors_total{backend="`+backend+`",class="deadline_exceeded"} 0`,
		`wsbridge_build_info{commit="abc123",goversion="`+runtime.Version()+`",version="v1.2.3"} 1`,
	); len(m) > 0 {
		t.Fatalf("/metrics at start lacks %q", m)
	}

	post(t, h.base+"/v1/call/echo", `[1]`, nil)
	post(t, h.base+"/v1/call/echo", `[2]`, nil)
	post(t, h.base+"/v1/call/fail", `{"code":-32601,"message":"x"}`, nil)
	post(t, h.base+"/v1/call/fail", `{"code":-32000,"message":"x"}`, nil)
	ctx, cancel := context.WithTimeout(ctxT(t), 100*time.Millisecond)
	_, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "sleep", Params: value(t, `{"ms":2000}`)})
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("sleep past its deadline: %v", err)
	}

	var missing []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, body = get(t, h.base+"/metrics")
		missing = want(body,
			`wsbridge_backend_request_duration_seconds_count{backend="`+backend+`",outcome="ok"} 2`,
			`wsbridge_backend_request_duration_seconds_count{backend="`+backend+`",outcome="backend_error"} 2`,
			`wsbridge_backend_request_duration_seconds_count{backend="`+backend+`",outcome="deadline_exceeded"} 1`,
			`wsbridge_backend_request_errors_total{backend="`+backend+`",class="method_not_found"} 1`,
			`wsbridge_backend_request_errors_total{backend="`+backend+`",class="server_error"} 1`,
			`wsbridge_backend_request_errors_total{backend="`+backend+`",class="deadline_exceeded"} 1`,
			`wsbridge_backend_request_errors_total{backend="`+backend+`",class="reply_lost"} 0`,
		)
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(missing) > 0 {
		t.Errorf("/metrics lacks %q", missing)
	}
	if n := userCalls.Load(); n != 5 {
		t.Errorf("the user's OnBackendRequest ran %d times, want 5", n)
	}
}

// The label values come from bounded sets: the outcome is "ok" or a
// bridge code's name, the class a JSON-RPC class or a bridge code's name.
func TestBackendMetricLabelsAreBounded(t *testing.T) {
	names := map[string]bool{"ok": true, "internal": true}
	for _, c := range bridge.Codes() {
		names[c.String()] = true
	}
	for _, c := range rpcClasses {
		names[c] = true
	}
	for _, err := range []error{nil, context.Canceled, &bridge.Error{Code: bridge.CodeReplyLost},
		&bridge.Error{Code: bridge.CodeBackendError}, &bridge.Error{Code: bridge.Code(999)}} {
		if o, c := backendOutcome(err), backendErrorClass(err); !names[o] || !names[c] {
			t.Errorf("%v: outcome %q, class %q", err, o, c)
		}
	}
}
