package observe

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v3"
)

// The alerts the rules file must have (the brief of deploy/observability/).
var requiredAlerts = []string{"WsbridgeBackendDown", "WsbridgeBackendUnavailable", "WsbridgeBackendEjected",
	"WsbridgeHighErrorRatio", "WsbridgeHighLatencyP99", "WsbridgeReconnectStorm"}

// The metrics the dashboard must chart, one panel or more each.
var requiredDashboardMetrics = []string{
	"wsbridge_call_duration_seconds_count",             // requests by face and outcome
	"wsbridge_call_duration_seconds_bucket",            // latency p50/p99
	"wsbridge_backend_state",                           // backend state
	"wsbridge_backend_reconnects_total",                // reconnects
	"wsbridge_backend_dial_failures_total",             // dial failures
	"wsbridge_in_flight",                               // calls in flight
	"wsbridge_slow_consumers_total",                    // slow consumers
	"wsbridge_errors_by_reason_total",                  // errors by reason
	"wsbridge_per_backend_requests_sent_total",         // per-backend requests
	"wsbridge_per_backend_state",                       // per-backend state
	"wsbridge_per_backend_connectivity",                // per-backend connectivity
	"wsbridge_per_backend_unavailable",                 // why a backend is out of rotation
	"wsbridge_per_backend_available",                   // per-backend availability
	"wsbridge_per_backend_head",                        // per-backend health value (lag)
	"wsbridge_per_backend_ejections_total",             // ejections
	"wsbridge_backend_request_duration_seconds_bucket", // per-backend latency
	"wsbridge_backend_request_errors_total",            // per-backend errors
	"wsbridge_build_info",                              // versions
}

// Metrics Prometheus makes itself, not the gateway.
var synthesized = map[string]bool{"up": true}

func loadRules(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.ParseFile(alertsFile, false, model.LegacyValidation, promParser, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if len(errs) > 0 {
		t.Fatalf("%s: %v", alertsFile, errs)
	}
	return groups
}

// The rules file parses strictly, and each rule is an alert with a
// severity, a summary and a description, on the gateway's metrics.
func TestAlertRulesFile(t *testing.T) {
	groups := loadRules(t)
	seen := map[string]rulefmt.Rule{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a recording rule (%s); this file holds alerts", g.Name, r.Record)
				continue
			}
			if _, dup := seen[r.Alert]; dup {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			seen[r.Alert] = r
			if !strings.HasPrefix(r.Alert, "Wsbridge") {
				t.Errorf("alert %s: name should start with Wsbridge", r.Alert)
			}
			if sev := r.Labels["severity"]; !slices.Contains([]string{"critical", "warning", "info"}, sev) {
				t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, sev)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("alert %s: no %s annotation", r.Alert, a)
				}
			}
			expr, err := promParser.ParseExpr(r.Expr)
			if err != nil {
				t.Errorf("alert %s: %v", r.Alert, err)
				continue
			}
			sels := selectors(r.Expr, expr)
			if len(sels) == 0 {
				t.Errorf("alert %s: its expression selects no series", r.Alert)
			}
			for _, s := range sels {
				if !strings.HasPrefix(s.name, "wsbridge_") && !synthesized[s.name] {
					t.Errorf("alert %s: selector %s is not on a wsbridge_ metric", r.Alert, s.text)
				}
			}
		}
	}
	for _, name := range requiredAlerts {
		if _, ok := seen[name]; !ok {
			t.Errorf("no alert %s", name)
		}
	}
	if r, ok := seen["WsbridgeBackendDown"]; ok && time.Duration(r.For) != time.Minute {
		t.Errorf("WsbridgeBackendDown: for %v, want 1m", r.For)
	}
	if r, ok := seen["WsbridgeHighErrorRatio"]; ok && time.Duration(r.For) < 2*time.Minute {
		t.Errorf("WsbridgeHighErrorRatio: for %v, want some minutes", r.For)
	}
}

// promtool accepts the rules file.
func TestPromtoolCheckRules(t *testing.T) {
	_, promtool := prometheusTools(t)
	out, err := exec.Command(promtool, "check", "rules", alertsFile).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", alertsFile, err, out)
	}
	if !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool check rules: no SUCCESS in\n%s", out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
}

// promtool's unit tests of the rules (alerts_test.yaml) pass, and test
// each backend alert firing.
func TestPromtoolTestRules(t *testing.T) {
	_, promtool := prometheusTools(t)
	out, err := exec.Command(promtool, "test", "rules", alertsTestFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool test rules %s: %v\n%s", alertsTestFile, err, out)
	}
	data, err := os.ReadFile(alertsTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(data, &tests); err != nil {
		t.Fatalf("%s: %v", alertsTestFile, err)
	}
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if strings.HasPrefix(r.Alert, "WsbridgeBackend") && !fires[r.Alert] {
				t.Errorf("%s: no test in %s where it fires", r.Alert, alertsTestFile)
			}
		}
	}
}

// The dashboard is well formed: one Prometheus data source variable used by
// every panel and query, unique ids, panels on the grid, queries that parse
// once the variables are substituted, every range is $__rate_interval, and
// the required metrics are charted.
func TestDashboardFile(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: both needed", d.Title, d.UID)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want a recent one (36 or later)", d.SchemaVersion)
	}
	vars := map[string]string{"__rate_interval": rateIntervalIs}
	hasDS := false
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			if v.Name == "datasource" && v.queryText() == "prometheus" {
				hasDS = true
			}
		case "query":
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable %s: datasource %+v, want uid ${datasource}", v.Name, v.Datasource)
			}
			if !labelValues.MatchString(v.queryText()) {
				t.Errorf("variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, v.queryText())
			}
		}
		vars[v.Name] = ".*"
	}
	if !hasDS {
		t.Errorf("no datasource variable named datasource of type prometheus")
	}
	ids := map[int]string{}
	charted := map[string]bool{}
	for _, p := range d.allPanels() {
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d used by %q and %q", p.ID, other, p.Title)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v off the 24-column grid", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want prometheus ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("panel %q: refId %q empty or repeated", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q target %s: datasource %+v", p.Title, tg.RefID, tg.Datasource)
			}
		}
	}
	exprs := d.exprs()
	if len(exprs) < 10 {
		t.Errorf("only %d queries in the dashboard", len(exprs))
	}
	for _, e := range exprs {
		if strings.TrimSpace(e.expr) == "" {
			t.Errorf("%s: empty query", e.where)
			continue
		}
		src, err := expand(e.expr, vars)
		if err != nil {
			t.Errorf("%s: %v", e.where, err)
			continue
		}
		expr, err := promParser.ParseExpr(src)
		if err != nil {
			t.Errorf("%s: %q: %v", e.where, src, err)
			continue
		}
		for _, r := range ranges(expr) {
			if want, _ := time.ParseDuration(rateIntervalIs); r != want {
				t.Errorf("%s: a range of %v: use [$__rate_interval] (%s)", e.where, r, e.expr)
			}
		}
		for _, s := range selectors(src, expr) {
			if !strings.HasPrefix(s.name, "wsbridge_") {
				t.Errorf("%s: selector %s is not on a wsbridge_ metric", e.where, s.text)
			}
			if !strings.Contains(s.text, `job=~"`) || !strings.Contains(s.text, `instance=~"`) {
				t.Errorf("%s: selector %s ignores the $job or $instance variable", e.where, s.text)
			}
			charted[s.name] = true
		}
	}
	for _, m := range requiredDashboardMetrics {
		if !charted[m] {
			t.Errorf("the dashboard charts no %s", m)
		}
	}
}

// ---------------------------------------------------------------------------
// Live: the gateway under load, scraped by a real Prometheus.

// load drives REST calls against one gateway until stopped; in-flight calls
// are never cancelled, so the gateway's counts and the client's agree.
type load struct {
	calls, fails atomic.Int64
	unexpected   atomic.Int64
	mu           sync.Mutex
	firstProblem string
	stop         atomic.Bool
	wg           sync.WaitGroup
}

func (l *load) problem(format string, args ...any) {
	l.unexpected.Add(1)
	l.mu.Lock()
	if l.firstProblem == "" {
		l.firstProblem = fmt.Sprintf(format, args...)
	}
	l.mu.Unlock()
}

func (l *load) halt() {
	l.stop.Store(true)
	l.wg.Wait()
}

// call posts params to /v1/call/METHOD and returns the status and body.
func call(base, method, params string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/call/"+method, strings.NewReader(params))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// demoLoad: workers in a loop; of every ten calls one fails (the demo's
// fail, -32601: HTTP 501), one sleeps 200 ms, eight are echoes.
func demoLoad(g *gateway, workers int) *load {
	l := &load{}
	base := "http://" + g.http
	for w := range workers {
		l.wg.Go(func() {
			for i := w; !l.stop.Load(); i++ {
				l.calls.Add(1)
				switch i % 10 {
				case 0:
					l.fails.Add(1)
					code, body, err := call(base, "fail", `{"code":-32601,"message":"observe test"}`)
					if err != nil || code != http.StatusNotImplemented {
						l.problem("fail: HTTP %d %s (%v), want 501", code, body, err)
					}
				case 5:
					code, body, err := call(base, "sleep", `{"ms":200}`)
					if err != nil || code != http.StatusOK {
						l.problem("sleep: HTTP %d %s (%v)", code, body, err)
					}
				default:
					code, body, err := call(base, "echo", fmt.Sprintf("[%d]", i))
					var got struct{ Result []int }
					if err != nil || code != http.StatusOK || json.Unmarshal(body, &got) != nil || len(got.Result) != 1 || got.Result[0] != i {
						l.problem("echo [%d]: HTTP %d %s (%v)", i, code, body, err)
					}
				}
			}
		})
	}
	return l
}

// brokenLoad: echo calls, 20 a second per worker, to a gateway whose
// backend does not exist: every one fails.
func brokenLoad(g *gateway, workers int) *load {
	l := &load{}
	base := "http://" + g.http
	for range workers {
		l.wg.Go(func() {
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for ; !l.stop.Load(); <-tick.C {
				l.calls.Add(1)
				l.fails.Add(1)
				code, body, err := call(base, "echo", "[1]")
				if err != nil || code < 500 {
					l.problem("echo to the gateway without a backend: HTTP %d %s (%v), want a 5xx", code, body, err)
				}
			}
		})
	}
	return l
}

// statsSample is the gateway's requestsHandled at a moment.
type statsSample struct {
	at      time.Time
	handled float64
}

// sampler reads /v1/stats every 200 ms until stopped.
type sampler struct {
	mu      sync.Mutex
	samples []statsSample
	stop    chan struct{}
	done    chan struct{}
}

func sampleStats(t *testing.T, g *gateway) *sampler {
	s := &sampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			before := time.Now()
			st, err := g.stats(context.Background())
			after := time.Now()
			if err == nil {
				var h float64
				if _, err := fmt.Sscan(st.RequestsHandled, &h); err == nil {
					s.mu.Lock()
					s.samples = append(s.samples, statsSample{at: before.Add(after.Sub(before) / 2), handled: h})
					s.mu.Unlock()
				}
			}
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(s.halt)
	return s
}

func (s *sampler) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// at returns the sample nearest to when.
func (s *sampler) at(when time.Time) (statsSample, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	best, ok := statsSample{}, false
	for _, x := range s.samples {
		if !ok || x.at.Sub(when).Abs() < best.at.Sub(when).Abs() {
			best, ok = x, true
		}
	}
	return best, ok && best.at.Sub(when).Abs() < 500*time.Millisecond
}

// startPrometheus runs prometheus (not as a daemon) scraping targets every
// second with the rules file, on a free loopback port, and waits until it
// is ready.
func startPrometheus(t *testing.T, bin, dir string, targets []string) promAPI {
	t.Helper()
	rules, err := filepath.Abs(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = fmt.Sprintf("%q", tg)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: %s
    metrics_path: /metrics
    static_configs:
      - targets: [%s]
`, rules, scrapeJob, strings.Join(quoted, ", "))
	configFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configFile, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// The port is free when picked; if something takes it before
	// Prometheus binds it, Prometheus exits and another is tried.
	for attempt := 1; ; attempt++ {
		addr := freeAddr(t)
		data := filepath.Join(dir, fmt.Sprintf("data-%d", attempt))
		p := start(t, "prometheus", nil, os.Environ(), bin,
			"--config.file="+configFile,
			"--storage.tsdb.path="+data,
			"--web.listen-address="+addr,
			// Debian's defaults point at /etc/prometheus/console*; the
			// test serves no consoles, and needs nothing from /etc.
			"--web.console.templates="+filepath.Join(dir, "consoles"),
			"--web.console.libraries="+filepath.Join(dir, "console_libraries"),
			"--log.level=warn")
		api := promAPI{base: "http://" + addr}
		ready := false
		poll(t, "prometheus is ready or has exited", 60*time.Second, 100*time.Millisecond, func() (bool, string) {
			if p.exited() {
				return true, ""
			}
			resp, err := httpClient.Get(api.base + "/-/ready")
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			ready = resp.StatusCode == http.StatusOK
			return ready, resp.Status
		})
		if ready {
			t.Logf("prometheus on %s, scraping %v every second", addr, targets)
			return api
		}
		if attempt == 3 {
			t.Fatalf("prometheus exited: %v\n%s", p.exitErr(), p.output())
		}
		t.Logf("prometheus exited (attempt %d), trying another port: %v", attempt, p.exitErr())
	}
}

// TestWithPrometheus runs three gateways: one with the demo backend under
// mixed load, one whose backend does not exist under load, and one with
// two backends, one of which refuses connections, and no load (a few calls
// at start, then none); and a real Prometheus scraping them with the alert
// rules. It then checks the dashboard and the rules against it.
func TestWithPrometheus(t *testing.T) {
	promBin, _ := prometheusTools(t)
	startedAt := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()

	bin := buildWsbridge(t, dir)
	demo := startGateway(t, bin, "wsbridge --demo", "--demo", "--demo-tick", "1s")
	broken := startGateway(t, bin, "wsbridge without a backend", "--backend", "ws://"+freeAddr(t)+"/")
	liveBackend, refusingBackend := startBackend(t, bin), "ws://"+freeAddr(t)+"/"
	quiet := startGateway(t, bin, "wsbridge with one of two backends refusing, no load",
		"--backend", liveBackend, "--backend", refusingBackend, "--balance", "round-robin")
	prom := startPrometheus(t, promBin, dir, []string{demo.admin, broken.admin, quiet.admin})

	// The quiet gateway is lazy: its first calls dial both backends (the
	// refusing one's calls go to the other). Then it gets no call: what
	// it says of the refusing backend from then on comes from its
	// background redials alone.
	const quietCalls = 4
	for i := range quietCalls {
		if code, body, err := call("http://"+quiet.http, "echo", fmt.Sprintf("[%d]", i)); err != nil || code != http.StatusOK {
			t.Fatalf("echo through the gateway with one backend refusing: HTTP %d %s (%v), want 200", code, body, err)
		}
	}
	down, up := displayURL(t, refusingBackend), displayURL(t, liveBackend)
	poll(t, "the quiet gateway has found the refusing backend down", 30*time.Second, 100*time.Millisecond, func() (bool, string) {
		st, err := quiet.stats(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, b := range st.Backends {
			if b.URL == down && b.Connectivity == "BACKEND_CONNECTIVITY_TRANSIENT_FAILURE" && !b.Available {
				return true, ""
			}
		}
		return false, fmt.Sprintf("backends %+v", st.Backends)
	})

	demoCalls := demoLoad(demo, 8)
	brokenCalls := brokenLoad(broken, 2)
	t.Cleanup(demoCalls.halt)
	t.Cleanup(brokenCalls.halt)
	samples := sampleStats(t, demo)
	loadStart := time.Now()

	sel := func(g *gateway, extra string) string {
		s := fmt.Sprintf(`job=%q,instance=%q`, scrapeJob, g.admin)
		if extra != "" {
			s += "," + extra
		}
		return "{" + s + "}"
	}

	// Rates need history: wait until Prometheus holds 15 scrapes of each
	// gateway under load (about 15 s), and the call histogram.
	poll(t, "Prometheus has 15 scrapes of each gateway under load", 90*time.Second, 500*time.Millisecond, func() (bool, string) {
		var why []string
		for _, g := range []*gateway{demo, broken} {
			q := fmt.Sprintf(`count_over_time(wsbridge_requests_handled_total%s[1m]) >= 15 and wsbridge_requests_handled_total%s > 0`, sel(g, ""), sel(g, ""))
			res, err := prom.query(ctx, q, time.Time{})
			if err != nil || len(res) == 0 {
				why = append(why, fmt.Sprintf("%s: %v %v", g.name, res, err))
			}
		}
		res, err := prom.query(ctx, `wsbridge_call_duration_seconds_bucket`+sel(demo, `code="OK"`), time.Time{})
		if err != nil || len(res) == 0 {
			why = append(why, fmt.Sprintf("no call histogram: %v", err))
		}
		return len(why) == 0, strings.Join(why, "; ")
	})
	t.Logf("data after %v of load", time.Since(loadStart).Round(time.Millisecond))

	exported, err := exportedNames(ctx, demo)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"wsbridge_requests_handled_total", "wsbridge_call_duration_seconds_bucket", "wsbridge_backend_state"} {
		if !exported[want] {
			t.Fatalf("the gateway's /metrics has no %s: reading it failed", want)
		}
	}
	// checkSelectors: each selector of expr names a metric of the gateway's
	// /metrics (or one Prometheus makes) and selects series.
	checkSelectors := func(t *testing.T, where, src string, expr parser.Expr) {
		t.Helper()
		for _, s := range selectors(src, expr) {
			if !exported[s.name] && !synthesized[s.name] {
				t.Errorf("%s: metric %q (in %s) is not in the gateway's /metrics", where, s.name, s.text)
				continue
			}
			res, err := prom.query(ctx, s.text, time.Time{})
			if err != nil || len(res) == 0 {
				t.Errorf("%s: selector %s selects no series (%v)", where, s.text, err)
			}
		}
	}

	t.Run("BackendState", func(t *testing.T) {
		v, err := prom.value(ctx, `wsbridge_backend_state`+sel(demo, `state="connected"`))
		if err != nil || v != 1 {
			t.Errorf("demo gateway: backend state connected = %v (%v), want 1", v, err)
		}
		st, err := demo.stats(ctx)
		if err != nil || st.BackendState != "BACKEND_STATE_CONNECTED" {
			t.Errorf("demo gateway: stats backendState %q (%v)", st.BackendState, err)
		}
		v, err = prom.value(ctx, `wsbridge_backend_state`+sel(broken, `state="connected"`))
		if err != nil || v != 0 {
			t.Errorf("gateway without a backend: backend state connected = %v (%v), want 0", v, err)
		}
		v, err = prom.value(ctx, `sum(wsbridge_per_backend_state`+sel(demo, `state="connected"`)+`)`)
		if err != nil || v != 1 {
			t.Errorf("demo gateway: per-backend connected = %v (%v), want 1", v, err)
		}
	})

	// The quiet gateway shows its refusing backend down with no traffic,
	// and stays ready on the other; the dashboard's table says why.
	t.Run("BackendDownWithoutTraffic", func(t *testing.T) {
		backend := func(u, extra string) string {
			return sel(quiet, fmt.Sprintf("backend=%q", u)+extra)
		}
		checks := []struct {
			expr string
			want float64
		}{
			{`wsbridge_per_backend_available` + backend(down, ""), 0},
			{`wsbridge_per_backend_available` + backend(up, ""), 1},
			{`sum(wsbridge_per_backend_unavailable` + backend(down, `,reason=~"failing|breaker_open"`) + `)`, 1},
			{`sum(wsbridge_per_backend_unavailable` + backend(up, "") + `)`, 0},
			{`wsbridge_per_backend_connectivity` + backend(down, `,state="transient_failure"`), 1},
			{`wsbridge_per_backend_connectivity` + backend(up, `,state="ready"`), 1},
			{`wsbridge_ready` + sel(quiet, ""), 1},
			{`wsbridge_requests_handled_total` + sel(quiet, ""), quietCalls},
		}
		poll(t, "Prometheus shows the refusing backend down and the other up", 30*time.Second, 250*time.Millisecond, func() (bool, string) {
			var why []string
			for _, c := range checks {
				if v, err := prom.value(ctx, c.expr); err != nil || v != c.want {
					why = append(why, fmt.Sprintf("%s = %v (%v), want %v", c.expr, v, err, c.want))
				}
			}
			return len(why) == 0, strings.Join(why, "; ")
		})
		vars := map[string]string{"__rate_interval": rateIntervalIs, "job": scrapeJob, "instance": quiet.admin, "datasource": "prometheus"}
		reasons := map[string]string{}
		for _, p := range loadDashboard(t).allPanels() {
			for _, tg := range p.Targets {
				if p.Title != "Per-backend state" || !strings.Contains(tg.Expr, "wsbridge_per_backend_unavailable") {
					continue
				}
				src, err := expand(tg.Expr, vars)
				if err != nil {
					t.Fatal(err)
				}
				res, err := prom.query(ctx, src, time.Time{})
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range res {
					reasons[r.Metric["backend"]] = r.Metric["reason"]
				}
			}
		}
		if r := reasons[down]; r != "failing" && r != "breaker_open" {
			t.Errorf("the dashboard's Per-backend state gives %s the reason %q, want failing or breaker_open (all: %v)", down, r, reasons)
		}
		if r := reasons[up]; r != "available" {
			t.Errorf("the dashboard's Per-backend state gives %s the reason %q, want available (all: %v)", up, r, reasons)
		}
	})

	t.Run("Quantiles", func(t *testing.T) {
		q := func(phi string) float64 {
			expr := fmt.Sprintf(`histogram_quantile(%s, sum by (le) (rate(wsbridge_call_duration_seconds_bucket%s[1m])))`, phi, sel(demo, ""))
			v, err := prom.value(ctx, expr)
			if err != nil {
				t.Fatalf("%s: %v", expr, err)
			}
			if !finite(v) {
				t.Fatalf("%s = %v, want a finite value", expr, v)
			}
			return v
		}
		p50, p99 := q("0.5"), q("0.99")
		t.Logf("p50 %.4fs, p99 %.4fs", p50, p99)
		// Eight calls in ten are echoes (fast); one in ten sleeps 200 ms, so
		// the 99th percentile is a sleep.
		if p50 <= 0 || p50 >= 0.1 {
			t.Errorf("p50 = %vs, want an echo's latency (0 < p50 < 0.1s)", p50)
		}
		if p99 < 0.1 || p99 >= 1 {
			t.Errorf("p99 = %vs, want a 200 ms sleep's (0.1s <= p99 < 1s)", p99)
		}
	})

	t.Run("CountersAgreeWithStatsUnderLoad", func(t *testing.T) {
		// stats, then a scrape that started after it, then stats again: the
		// scraped counter lies between the two.
		before, err := demo.stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		afterMs := float64(time.Now().UnixMilli()+1) / 1000
		var got map[string]float64
		poll(t, "a scrape after the stats were read", 20*time.Second, 100*time.Millisecond, func() (bool, string) {
			res, err := prom.query(ctx, fmt.Sprintf(`{__name__=~"wsbridge_requests_handled_total|wsbridge_errors_total",%s}`, strings.Trim(sel(demo, ""), "{}")), time.Time{})
			if err != nil {
				return false, err.Error()
			}
			ts, err := prom.query(ctx, `timestamp(wsbridge_requests_handled_total`+sel(demo, "")+`)`, time.Time{})
			if err != nil || len(ts) != 1 || len(res) != 2 {
				return false, fmt.Sprintf("%v %v %v", res, ts, err)
			}
			if ts[0].V <= afterMs {
				return false, fmt.Sprintf("last scrape at %.3f, stats read at %.3f", ts[0].V, afterMs)
			}
			got = map[string]float64{}
			for _, s := range res {
				got[s.Metric["__name__"]] = s.V
			}
			return true, ""
		})
		after, err := demo.stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct{ metric, stat, lo, hi string }{
			{"wsbridge_requests_handled_total", "requestsHandled", before.RequestsHandled, after.RequestsHandled},
			{"wsbridge_errors_total", "errors", before.Errors, after.Errors},
		} {
			lo, hi := num(t, c.stat, c.lo), num(t, c.stat, c.hi)
			if v := got[c.metric]; v < lo || v > hi || hi <= lo {
				t.Errorf("%s = %v in Prometheus; the gateway's %s was %v before that scrape and %v after (want between, and growing)", c.metric, v, c.stat, lo, hi)
			}
		}
	})

	t.Run("RatesAgreeWithStats", func(t *testing.T) {
		const window = 10 * time.Second
		// The sampler started with the load; the window must lie within it.
		now := time.Now()
		if now.Sub(loadStart) < window+2*time.Second {
			t.Fatalf("load ran %v, shorter than the rate window", now.Sub(loadStart))
		}
		from, ok1 := samples.at(now.Add(-window))
		to, ok2 := samples.at(now)
		if !ok1 || !ok2 {
			t.Fatalf("no stats samples near the window's ends")
		}
		statsRate := (to.handled - from.handled) / to.at.Sub(from.at).Seconds()
		promRate, err := prom.value(ctx, fmt.Sprintf(`rate(wsbridge_requests_handled_total%s[10s])`, sel(demo, "")))
		if err != nil {
			t.Fatal(err)
		}
		faceRate, err := prom.value(ctx, fmt.Sprintf(`sum(rate(wsbridge_call_duration_seconds_count%s[10s]))`, sel(demo, "")))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("requests/s over 10 s: gateway stats %.1f, Prometheus rate %.1f, by face and outcome %.1f", statsRate, promRate, faceRate)
		if statsRate < 10 {
			t.Fatalf("the load made only %.1f requests/s", statsRate)
		}
		if math.Abs(promRate-statsRate)/statsRate > 0.2 {
			t.Errorf("Prometheus rate %.1f/s and the gateway's own %.1f/s differ by more than 20%%", promRate, statsRate)
		}
		if math.Abs(faceRate-promRate)/promRate > 0.05 {
			t.Errorf("requests by face and outcome sum to %.1f/s, wsbridge_requests_handled_total to %.1f/s", faceRate, promRate)
		}
	})

	t.Run("DashboardQueriesHaveData", func(t *testing.T) {
		d := loadDashboard(t)
		vars := map[string]string{"__rate_interval": rateIntervalIs, "job": scrapeJob, "instance": demo.admin, "datasource": "prometheus"}
		for _, v := range d.Templating.List {
			if v.Type != "query" {
				continue
			}
			m := labelValues.FindStringSubmatch(v.queryText())
			if m == nil {
				t.Errorf("variable %s: query %q is not label_values(SELECTOR, LABEL)", v.Name, v.queryText())
				continue
			}
			src, err := expand(m[1], vars)
			if err != nil {
				t.Errorf("variable %s: %v", v.Name, err)
				continue
			}
			expr, err := promParser.ParseExpr(src)
			if err != nil {
				t.Errorf("variable %s: %q: %v", v.Name, src, err)
				continue
			}
			checkSelectors(t, "variable "+v.Name, src, expr)
			res, err := prom.query(ctx, src, time.Time{})
			values := map[string]bool{}
			for _, s := range res {
				values[s.Metric[m[2]]] = true
			}
			if want := vars[v.Name]; err != nil || !values[want] {
				t.Errorf("variable %s: %s gives %s values %v (%v), want %q among them", v.Name, src, m[2], sortedKeys(values), err, want)
			}
		}
		for _, e := range d.exprs() {
			src, err := expand(e.expr, vars)
			if err != nil {
				t.Errorf("%s: %v", e.where, err)
				continue
			}
			expr, err := promParser.ParseExpr(src)
			if err != nil {
				t.Errorf("%s: %v", e.where, err)
				continue
			}
			checkSelectors(t, e.where, src, expr)
			if _, err := hasData(ctx, prom, source(src), expr, false); err != nil {
				t.Errorf("%s: %v", e.where, err)
			}
		}
	})

	rules := loadRules(t)
	var alertNames []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alertNames = append(alertNames, r.Alert)
		}
	}

	t.Run("AlertExpressionsHaveData", func(t *testing.T) {
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				expr, err := promParser.ParseExpr(r.Expr)
				if err != nil {
					t.Errorf("%s: %v", r.Alert, err)
					continue
				}
				checkSelectors(t, r.Alert, r.Expr, expr)
				if tried, err := hasData(ctx, prom, source(r.Expr), expr, true); err != nil {
					t.Errorf("%s: %v (evaluated %q)", r.Alert, err, tried)
				}
				// The same on the demo gateway's series alone: there every
				// alert but WsbridgeHighErrorRatio is false, so this is
				// what checks their thresholds' operands.
				restrict(expr, labels.MustNewMatcher(labels.MatchEqual, "instance", demo.admin))
				tried, err := hasData(ctx, prom, printed, expr, true)
				switch {
				case err != nil:
					t.Errorf("%s on the demo gateway: %v (evaluated %q)", r.Alert, err, tried)
				case len(tried) > 1:
					t.Logf("%s: false on the demo gateway; evaluated %q", r.Alert, tried[len(tried)-1])
				default:
					t.Logf("%s: true on the demo gateway", r.Alert)
				}
			}
		}
	})

	t.Run("RulesLoadedAndHealthy", func(t *testing.T) {
		poll(t, "Prometheus evaluates every rule of alerts.yaml without error", 30*time.Second, 250*time.Millisecond, func() (bool, string) {
			groups, err := prom.rules(ctx)
			if err != nil {
				return false, err.Error()
			}
			loaded := map[string]loadedRule{}
			for _, rs := range groups {
				for _, r := range rs {
					loaded[r.Name] = r
				}
			}
			var why []string
			for _, name := range alertNames {
				r, ok := loaded[name]
				switch {
				case !ok:
					why = append(why, name+" not loaded")
				case r.Type != "alerting" || r.Health != "ok":
					why = append(why, fmt.Sprintf("%s: type %s, health %s %s", name, r.Type, r.Health, r.LastError))
				}
			}
			if len(loaded) != len(alertNames) {
				why = append(why, fmt.Sprintf("%d rules loaded, %d in the file", len(loaded), len(alertNames)))
			}
			return len(why) == 0, strings.Join(why, "; ")
		})
	})

	t.Run("AlertsThatTheLoadTrips", func(t *testing.T) {
		// The demo gateway fails one call in ten with a backend error: above
		// the 5 % of WsbridgeHighErrorRatio, and nothing else is wrong with
		// it. The second gateway has no backend: every call fails
		// UNAVAILABLE. The quiet one has a backend down, with no traffic.
		want := map[string][]string{
			demo.admin:   {"WsbridgeHighErrorRatio"},
			broken.admin: {"WsbridgeBackendDown", "WsbridgeBackendUnavailable", "WsbridgeGatewayErrorRatio", "WsbridgeHighErrorRatio"},
			quiet.admin:  {"WsbridgeBackendUnavailable"},
		}
		// Not for the gateway without a backend either: its target is up, no
		// call succeeds (no latency), it never connected (no reconnects).
		never := []string{"WsbridgeTargetDown", "WsbridgeHighLatencyP99", "WsbridgeReconnectStorm", "WsbridgeOverloaded", "WsbridgeSlowConsumers"}
		var active []activeAlert
		poll(t, "the alerts the load trips are pending", 60*time.Second, 250*time.Millisecond, func() (bool, string) {
			var err error
			active, err = prom.alerts(ctx)
			if err != nil {
				return false, err.Error()
			}
			var missing []string
			for inst, names := range want {
				for _, name := range names {
					if !slices.ContainsFunc(active, func(a activeAlert) bool {
						return a.Labels["alertname"] == name && a.Labels["instance"] == inst
					}) {
						missing = append(missing, name+" for "+inst)
					}
				}
			}
			return len(missing) == 0, fmt.Sprintf("missing %v; active %v", missing, active)
		})
		for _, a := range active {
			name, inst := a.Labels["alertname"], a.Labels["instance"]
			t.Logf("%s %s for %s (value %s): %s", a.State, name, inst, a.Value, a.Annotations["summary"])
			if a.State != "pending" && a.State != "firing" {
				t.Errorf("%s: state %q", name, a.State)
			}
			if inst == demo.admin && !slices.Contains(want[demo.admin], name) {
				t.Errorf("%s is active for the healthy demo gateway (value %s)", name, a.Value)
			}
			if inst == quiet.admin && (!slices.Contains(want[quiet.admin], name) || a.Labels["backend"] != down) {
				t.Errorf("%s is active for the quiet gateway, backend %q (value %s); want only WsbridgeBackendUnavailable for %s", name, a.Labels["backend"], a.Value, down)
			}
			if slices.Contains(never, name) {
				t.Errorf("%s is active for %s (value %s)", name, inst, a.Value)
			}
			if a.Labels["severity"] == "" || a.Labels["job"] != scrapeJob {
				t.Errorf("%s: labels %v lack severity or job", name, a.Labels)
			}
			for k, text := range a.Annotations {
				if strings.Contains(text, "error expanding template") || strings.Contains(text, "<no value>") || strings.TrimSpace(text) == "" {
					t.Errorf("%s: annotation %s did not expand: %q", name, k, text)
				}
			}
		}
	})

	// The load stops; once a scrape has seen the final counts, Prometheus and
	// the gateway's stats agree exactly, and both with what the client sent.
	demoCalls.halt()
	brokenCalls.halt()
	samples.halt()
	if n := demoCalls.unexpected.Load(); n > 0 {
		t.Errorf("%d demo calls did not answer as expected; the first: %s", n, demoCalls.firstProblem)
	}
	if n := brokenCalls.unexpected.Load(); n > 0 {
		t.Errorf("%d calls to the gateway without a backend did not fail as expected; the first: %s", n, brokenCalls.firstProblem)
	}

	t.Run("CountersEqualStatsAtRest", func(t *testing.T) {
		st, err := demo.stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		calls, fails := float64(demoCalls.calls.Load()), float64(demoCalls.fails.Load())
		if h, e := num(t, "requestsHandled", st.RequestsHandled), num(t, "errors", st.Errors); h != calls || e != fails {
			t.Errorf("stats: requestsHandled %v, errors %v; the client made %v calls, %v failing", h, e, calls, fails)
		}
		if len(st.Backends) != 1 {
			t.Fatalf("stats: %d backends, want 1", len(st.Backends))
		}
		checks := []struct{ expr, what, stat string }{
			{`wsbridge_requests_handled_total` + sel(demo, ""), "requestsHandled", st.RequestsHandled},
			{`wsbridge_errors_total` + sel(demo, ""), "errors", st.Errors},
			{`wsbridge_errors_by_reason_total` + sel(demo, `reason="backend_error"`), "errorsByReason.backend_error", st.ErrorsByReason["backend_error"]},
			{`wsbridge_backend_errors_by_class_total` + sel(demo, `class="method_not_found"`), "backendErrorsByClass.method_not_found", st.BackendErrorsByClass["method_not_found"]},
			{`wsbridge_backend_connects_total` + sel(demo, ""), "backendConnects", st.BackendConnects},
			{`wsbridge_per_backend_requests_sent_total` + sel(demo, ""), "backends[0].requestsSent", st.Backends[0].RequestsSent},
			{`sum(wsbridge_call_duration_seconds_count` + sel(demo, "") + `)`, "requestsHandled (every call in the histogram)", st.RequestsHandled},
			{`sum(wsbridge_call_duration_seconds_count` + sel(demo, `code!="OK"`) + `)`, "errors (every failed call in the histogram)", st.Errors},
		}
		poll(t, "Prometheus has scraped the final counts", 20*time.Second, 250*time.Millisecond, func() (bool, string) {
			var why []string
			for _, c := range checks {
				v, err := prom.value(ctx, c.expr)
				if want := num(t, c.what, c.stat); err != nil || v != want {
					why = append(why, fmt.Sprintf("%s = %v (%v), stats %s = %v", c.expr, v, err, c.what, want))
				}
			}
			return len(why) == 0, strings.Join(why, "; ")
		})
		t.Logf("at rest: %s requests, %s errors, in Prometheus and the gateway's stats alike", st.RequestsHandled, st.Errors)
	})

	t.Logf("TestWithPrometheus ran %v (%v of it under load)", time.Since(startedAt).Round(time.Millisecond), time.Since(loadStart).Round(time.Millisecond))
}
