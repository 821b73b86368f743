package browser

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsbridge/wsbridge/backend"
	"github.com/wsbridge/wsbridge/backend/backendtest"
	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/gatewaytest"
	"github.com/wsbridge/wsbridge/server"
)

// chromium finds the browser: $CHROMIUM, or Debian's package.
func chromium(t *testing.T) string {
	for _, p := range []string{os.Getenv("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	const msg = "Chromium is not installed (apt-get install chromium, or set $CHROMIUM): the dashboard test needs a real browser"
	if os.Getenv("WSBRIDGE_REQUIRE_BROWSER") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// text reads an element's text by id.
func text(ctx context.Context, t *testing.T, id string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID(id)))
	if err != nil {
		t.Fatalf("#%s: %v", id, err)
	}
	return s
}

// attr reads an element's attribute by id.
func attr(ctx context.Context, t *testing.T, id, name string) string {
	t.Helper()
	a, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.ID(id), name))
	if err != nil || !a.Exists {
		t.Fatalf("#%s[%s]: %v (exists %v)", id, name, err, a.Exists)
	}
	return a.Value
}

func number(t *testing.T, s string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(strings.ReplaceAll(s, ",", ""), 64)
	if err != nil {
		t.Fatalf("%q is not a number: %v", s, err)
	}
	return v
}

// The dashboard loads in Chromium, its numbers follow the traffic and agree
// with GetStats, and its charts draw; a screenshot is kept.
func TestDashboardInChromium(t *testing.T) {
	exe := chromium(t)
	backendURL, _ := backendtest.Start(t, backend.Options{Tick: 50 * time.Millisecond})
	srv := gatewaytest.Start(t, server.Options{Bridge: bridge.Options{URL: backendURL}})
	base := "http://" + srv.HTTPAddr().String()

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.Headless,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelTab()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()

	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("requests"))); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](`Number(document.body.dataset.updates) >= 2`)); err != nil {
		t.Fatalf("the page did not update from /v1/stats: %v", err)
	}
	before := text(ctx, t, "requests")
	// The page reads its snapshots from the event stream, not by polling.
	if transport, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.dataset.transport`)); err != nil || transport != "sse" {
		t.Fatalf("the dashboard updates by %q (%v), want sse (EventSource on /v1/stats:watch)", transport, err)
	}
	// The browser's own EventSource reads /v1/subscribe: backend ticks.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.ticks = [];
		new EventSource("/v1/subscribe?methods=tick").addEventListener("notification", (e) => window.ticks.push(JSON.parse(e.data).method));
		true`)); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](`window.ticks.length >= 3 && window.ticks.every((m) => m === "tick")`,
		chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("EventSource on /v1/subscribe got no ticks: %v", err)
	}

	// Traffic for a few seconds, so the charts have a shape: gRPC calls from
	// several clients, some slow, one in fifty to a method the backend lacks.
	conn, err := grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := wsbridgev1.NewBridgeServiceClient(conn)
	trafficCtx, stopTraffic := context.WithTimeout(ctx, 6*time.Second)
	defer stopTraffic()
	var failed atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; trafficCtx.Err() == nil; i++ {
				method, arg := "echo", i
				switch {
				case i%50 == 0:
					method = "no_such_method"
				case i%4 == 0:
					method, arg = "sleep", w // milliseconds
				}
				p := structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{structpb.NewNumberValue(float64(arg))}})
				if _, err := client.Call(context.Background(), &wsbridgev1.CallRequest{Method: method, Params: p}); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	stats, err := wsbridgev1.NewStatsServiceClient(conn).GetStats(context.Background(), &wsbridgev1.GetStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}

	// The page catches up with GetStats, and the chart has history.
	want := fmt.Sprint(stats.RequestsHandled)
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](
		fmt.Sprintf(`document.getElementById("requests").textContent.replaceAll(",", "") === %q`, want),
		chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("the page did not show the %s requests GetStats counts: %v (it shows %s)", want, err, text(ctx, t, "requests"))
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](
		`Number(document.getElementById("chart-rps").dataset.points) >= 5`,
		chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		t.Fatalf("the requests chart gathered no history: %v", err)
	}
	if requests := text(ctx, t, "requests"); number(t, requests) == number(t, before) {
		t.Fatalf("the request count did not change with traffic (%s)", requests)
	}
	if errs := text(ctx, t, "errors"); number(t, errs) != float64(stats.Errors) || stats.Errors != uint64(failed.Load()) {
		t.Fatalf("errors on the page %s, GetStats %d, failed calls %d", errs, stats.Errors, failed.Load())
	}
	connects, state, clientsGRPC := text(ctx, t, "connects"), text(ctx, t, "backend-state"), text(ctx, t, "clients-grpc")
	if number(t, connects) != float64(stats.BackendConnects) || state != "connected" || number(t, clientsGRPC) < 1 {
		t.Fatalf("connects %s (GetStats %d), state %q, gRPC clients %s", connects, stats.BackendConnects, state, clientsGRPC)
	}
	if url := text(ctx, t, "backend-url"); url != stats.BackendUrl {
		t.Fatalf("backend URL on the page %q, GetStats %q", url, stats.BackendUrl)
	}
	// The backends table has a row per backend, its URL first.
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](
		fmt.Sprintf(`document.getElementById("rows-backends").dataset.rows === "%d"`, len(stats.Backends)),
		chromedp.WithPollingTimeout(20*time.Second))); err != nil || len(stats.Backends) != 1 {
		t.Fatalf("the backends table lacks its %d rows: %v", len(stats.Backends), err)
	}
	firstURL, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#rows-backends tbody td").textContent`))
	if err != nil || firstURL != stats.Backends[0].Url {
		t.Fatalf("backends table URL %q (%v), GetStats %q", firstURL, err, stats.Backends[0].Url)
	}
	points := attr(ctx, t, "chart-rps", "data-points")
	if rpsMax := attr(ctx, t, "chart-rps", "data-max"); number(t, rpsMax) <= 1 {
		t.Fatalf("the requests chart plotted no traffic (max %s)", rpsMax)
	}

	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("ARTIFACTS_DIR")
	if dir == "" {
		dir = "artifacts"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "dashboard.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes; %s points charted)", path, len(png), points)
}
