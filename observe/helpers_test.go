package observe

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

const (
	repoRoot       = ".."
	observability  = "../deploy/observability"
	alertsFile     = observability + "/alerts.yaml"
	alertsTestFile = observability + "/alerts_test.yaml"
	dashboardFile  = observability + "/grafana-dashboard.json"
	requireEnv     = "WSBRIDGE_REQUIRE_PROMETHEUS"
	scrapeJob      = "wsbridge" // the job name alerts.yaml's WsbridgeTargetDown expects
	rateIntervalIs = "67s"      // what $__rate_interval becomes: odd, so its use can be checked
)

// promParser parses PromQL as Prometheus does.
var promParser = parser.NewParser(parser.Options{})

// ---------------------------------------------------------------------------
// Tools.

// prometheusTools finds Debian's prometheus and promtool. When either is
// missing the test skips, or fails when WSBRIDGE_REQUIRE_PROMETHEUS is set.
func prometheusTools(t *testing.T) (prometheus, promtool string) {
	t.Helper()
	find := func(name string) string {
		for _, p := range []string{name, "/usr/bin/" + name} {
			if path, err := exec.LookPath(p); err == nil {
				return path
			}
		}
		return ""
	}
	prometheus, promtool = find("prometheus"), find("promtool")
	if prometheus != "" && promtool != "" {
		return prometheus, promtool
	}
	msg := fmt.Sprintf("prometheus (%q) or promtool (%q) is not installed: apt-get install prometheus (Debian's package); "+
		"this test needs a real Prometheus (set %s=1 to fail instead of skipping)", prometheus, promtool, requireEnv)
	if os.Getenv(requireEnv) != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return "", ""
}

// ---------------------------------------------------------------------------
// Processes.

// proc is a child process whose output is kept (and shown if the test
// fails), and which is stopped at cleanup.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited

	mu    sync.Mutex
	lines []string
	err   error // from Wait
}

// start runs name args..., calling onLine (if not nil) with each line of
// its standard output and error. It is stopped with SIGTERM (then SIGKILL)
// when the test ends.
func start(t *testing.T, label string, onLine func(string), env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: label, cmd: exec.Command(name, args...), done: make(chan struct{})}
	p.cmd.Env = env
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", label, err)
	}
	var readers sync.WaitGroup
	for _, r := range []io.Reader{stdout, stderr} {
		readers.Go(func() {
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64*1024), 1024*1024)
			for sc.Scan() {
				line := sc.Text()
				p.mu.Lock()
				p.lines = append(p.lines, line)
				p.mu.Unlock()
				if onLine != nil {
					onLine(line)
				}
			}
		})
	}
	go func() {
		readers.Wait()
		err := p.cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			p.mu.Lock()
			tail := p.lines[max(0, len(p.lines)-40):]
			p.mu.Unlock()
			t.Logf("last lines of %s (exit: %v):\n%s", p.name, p.exitErr(), strings.Join(tail, "\n"))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// stop ends the process: SIGTERM, and SIGKILL if it has not exited 10 s
// later.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// baseEnv is the environment without WSBRIDGE_* variables, so that only
// the flags given configure the gateway.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WSBRIDGE_") {
			env = append(env, kv)
		}
	}
	return env
}

// buildWsbridge builds ./cmd/wsbridge with the main module (the repository
// root) into dir.
func buildWsbridge(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "wsbridge")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/wsbridge")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/wsbridge (in %s): %v\n%s", repoRoot, err, out)
	}
	return bin
}

// gateway is a running wsbridge and its listeners.
type gateway struct {
	*proc
	grpc, http, admin string
}

// startGateway runs wsbridge serve with args (port-0 listeners and a JSON
// log are added) and reads its addresses from the "wsbridge listening" log
// line.
func startGateway(t *testing.T, bin, label string, args ...string) *gateway {
	t.Helper()
	type listening struct {
		Msg               string
		GRPC, HTTP, Admin string
	}
	ch := make(chan listening, 1)
	onLine := func(line string) {
		var l listening
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "wsbridge listening" {
			select {
			case ch <- l:
			default:
			}
		}
	}
	args = append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--admin-addr", "127.0.0.1:0", "--log-format", "json"}, args...)
	p := start(t, label, onLine, baseEnv(), bin, args...)
	select {
	case l := <-ch:
		if l.HTTP == "" || l.Admin == "" || l.GRPC == "" {
			t.Fatalf("%s: the listening line lacks an address: %+v", label, l)
		}
		g := &gateway{proc: p, grpc: l.GRPC, http: l.HTTP, admin: l.Admin}
		t.Logf("%s: grpc %s, http %s, admin %s", label, g.grpc, g.http, g.admin)
		return g
	case <-p.done:
		t.Fatalf("%s exited before listening: %v\n%s", label, p.exitErr(), p.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not log \"wsbridge listening\" within 30 s:\n%s", label, p.output())
	}
	return nil
}

// startBackend runs the demo backend (wsbridge backend) on a free port and
// returns its URL, read from its "demo backend listening" log line.
func startBackend(t *testing.T, bin string) string {
	t.Helper()
	ch := make(chan string, 1)
	onLine := func(line string) {
		var l struct{ Msg, URL string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "demo backend listening" && l.URL != "" {
			select {
			case ch <- l.URL:
			default:
			}
		}
	}
	p := start(t, "wsbridge backend", onLine, baseEnv(), bin, "backend", "--listen", "127.0.0.1:0", "--log-format", "json")
	select {
	case u := <-ch:
		t.Logf("demo backend at %s", u)
		return u
	case <-p.done:
		t.Fatalf("wsbridge backend exited before listening: %v\n%s", p.exitErr(), p.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("wsbridge backend did not log that it listens within 30 s:\n%s", p.output())
	}
	return ""
}

// displayURL is a backend URL as the gateway's stats and metrics show it:
// scheme, host and port.
func displayURL(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Scheme + "://" + u.Host
}

// freeAddr returns a loopback address nothing listens on (at the moment).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// ---------------------------------------------------------------------------
// Polling.

// poll calls cond every interval until it reports true, or fails the test
// after timeout with cond's last explanation.
func poll(t *testing.T, what string, timeout, interval time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after %v: %s", what, timeout, why)
		}
		<-tick.C
	}
}

// ---------------------------------------------------------------------------
// HTTP.

var httpClient = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64},
}

func getJSON(ctx context.Context, rawURL string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", rawURL, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: %v: %s", rawURL, err, body)
	}
	return nil
}

func getText(ctx context.Context, rawURL string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return "", err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", rawURL, resp.Status, body)
	}
	return string(body), nil
}

// ---------------------------------------------------------------------------
// The gateway's stats (GET /v1/stats on the admin listener).

type stats struct {
	RequestsHandled      string            `json:"requestsHandled"`
	Errors               string            `json:"errors"`
	BackendState         string            `json:"backendState"`
	BackendConnects      string            `json:"backendConnects"`
	DialFailures         string            `json:"dialFailures"`
	ErrorsByReason       map[string]string `json:"errorsByReason"`
	BackendErrorsByClass map[string]string `json:"backendErrorsByClass"`
	Backends             []struct {
		URL          string `json:"url"`
		RequestsSent string `json:"requestsSent"`
		Available    bool   `json:"available"`
		Connectivity string `json:"connectivity"`
		Unavailable  string `json:"unavailable"`
	} `json:"backends"`
}

func (g *gateway) stats(ctx context.Context) (stats, error) {
	var s stats
	err := getJSON(ctx, "http://"+g.admin+"/v1/stats", &s)
	return s, err
}

// num parses one of the stats' 64-bit integers (JSON strings).
func num(t *testing.T, what, s string) float64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("stats %s = %q: not an unsigned integer", what, s)
	}
	return float64(v)
}

// exportedNames are the metric names in the gateway's /metrics (the
// series names: a histogram's _bucket, _sum and _count).
func exportedNames(ctx context.Context, g *gateway) (map[string]bool, error) {
	text, err := getText(ctx, "http://"+g.admin+"/metrics")
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	return names, nil
}

// ---------------------------------------------------------------------------
// Prometheus's HTTP API.

type promAPI struct {
	base string // http://host:port
}

type sample struct {
	Metric map[string]string
	T      float64 // seconds
	V      float64
}

// query evaluates expr at now (at, when not zero) and returns the samples
// of its instant vector (or its scalar as one sample).
func (p promAPI) query(ctx context.Context, expr string, at time.Time) ([]sample, error) {
	q := url.Values{"query": {expr}}
	if !at.IsZero() {
		q.Set("time", strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64))
	}
	var resp struct {
		Status    string
		Error     string
		ErrorType string
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		}
	}
	if err := getJSON(ctx, p.base+"/api/v1/query?"+q.Encode(), &resp); err != nil {
		return nil, err
	}
	if resp.Status != "success" {
		return nil, fmt.Errorf("query %q: %s: %s", expr, resp.ErrorType, resp.Error)
	}
	point := func(raw []any) (float64, float64, error) {
		if len(raw) != 2 {
			return 0, 0, fmt.Errorf("query %q: a point of %d elements", expr, len(raw))
		}
		ts, _ := raw[0].(float64)
		vs, _ := raw[1].(string)
		v, err := strconv.ParseFloat(vs, 64)
		return ts, v, err
	}
	switch resp.Data.ResultType {
	case "vector":
		var res []struct {
			Metric map[string]string
			Value  []any
		}
		if err := json.Unmarshal(resp.Data.Result, &res); err != nil {
			return nil, err
		}
		out := make([]sample, 0, len(res))
		for _, r := range res {
			ts, v, err := point(r.Value)
			if err != nil {
				return nil, err
			}
			out = append(out, sample{Metric: r.Metric, T: ts, V: v})
		}
		return out, nil
	case "scalar":
		var raw []any
		if err := json.Unmarshal(resp.Data.Result, &raw); err != nil {
			return nil, err
		}
		ts, v, err := point(raw)
		return []sample{{T: ts, V: v}}, err
	}
	return nil, fmt.Errorf("query %q: result type %q, want an instant vector or scalar", expr, resp.Data.ResultType)
}

// value evaluates expr, which must give exactly one sample.
func (p promAPI) value(ctx context.Context, expr string) (float64, error) {
	s, err := p.query(ctx, expr, time.Time{})
	if err != nil {
		return 0, err
	}
	if len(s) != 1 {
		return 0, fmt.Errorf("query %q: %d samples, want 1: %v", expr, len(s), s)
	}
	return s[0].V, nil
}

type activeAlert struct {
	Labels      map[string]string
	Annotations map[string]string
	State       string
	Value       string
}

func (p promAPI) alerts(ctx context.Context) ([]activeAlert, error) {
	var resp struct {
		Status string
		Data   struct{ Alerts []activeAlert }
	}
	if err := getJSON(ctx, p.base+"/api/v1/alerts", &resp); err != nil {
		return nil, err
	}
	if resp.Status != "success" {
		return nil, fmt.Errorf("/api/v1/alerts: status %q", resp.Status)
	}
	return resp.Data.Alerts, nil
}

type loadedRule struct {
	Name, Query, Health, LastError, Type string
}

func (p promAPI) rules(ctx context.Context) (map[string][]loadedRule, error) {
	var resp struct {
		Status string
		Data   struct {
			Groups []struct {
				Name  string
				File  string
				Rules []loadedRule
			}
		}
	}
	if err := getJSON(ctx, p.base+"/api/v1/rules", &resp); err != nil {
		return nil, err
	}
	out := map[string][]loadedRule{}
	for _, g := range resp.Data.Groups {
		out[g.Name] = append(out[g.Name], g.Rules...)
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// PromQL.

// selector is one vector selector of an expression.
type selector struct {
	name string // the metric name ("" if it names none)
	text string // as written, without a range
}

// selectors returns the vector selectors of the parsed expression src.
func selectors(src string, expr parser.Expr) []selector {
	var out []selector
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		if name == "" {
			for _, m := range vs.LabelMatchers {
				if m.Name == "__name__" && m.Type.String() == "=" {
					name = m.Value
				}
			}
		}
		pr := vs.PositionRange()
		out = append(out, selector{name: name, text: src[pr.Start:pr.End]})
		return nil
	})
	return out
}

// ranges returns the range of every range selector and subquery in expr.
func ranges(expr parser.Expr) []time.Duration {
	var out []time.Duration
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		switch m := n.(type) {
		case *parser.MatrixSelector:
			out = append(out, m.Range)
		case *parser.SubqueryExpr:
			out = append(out, m.Range)
		}
		return nil
	})
	return out
}

// source renders a node of the expression parsed from src as written.
func source(src string) func(parser.Node) string {
	return func(n parser.Node) string {
		pr := n.PositionRange()
		return src[pr.Start:pr.End]
	}
}

// printed renders a node with the parser's printer (for an expression
// changed after parsing).
func printed(n parser.Node) string { return n.String() }

// restrict adds matchers to every vector selector of expr (in place).
func restrict(expr parser.Expr, matchers ...*labels.Matcher) {
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			vs.LabelMatchers = append(vs.LabelMatchers, matchers...)
		}
		return nil
	})
}

// hasData reports whether the expression node (as render writes it)
// evaluates to at least one sample. When strip is set and it does not, a
// threshold comparison (vector against scalar, without bool) is removed
// and the vector side evaluated instead, and each side of a set operation
// (and, or, unless) must evaluate to data, recursively: so an alert
// condition that is false under healthy load is checked for what it
// compares. It returns the expressions evaluated, in order.
func hasData(ctx context.Context, p promAPI, render func(parser.Node) string, node parser.Expr, strip bool) (tried []string, err error) {
	text := render(node)
	tried = append(tried, text)
	res, err := p.query(ctx, text, time.Time{})
	if err != nil {
		return tried, err
	}
	if len(res) > 0 {
		return tried, nil
	}
	noData := fmt.Errorf("no data for %q", text)
	if !strip {
		return tried, noData
	}
	switch e := node.(type) {
	case *parser.ParenExpr:
		more, err := hasData(ctx, p, render, e.Expr, strip)
		return append(tried, more...), err
	case *parser.BinaryExpr:
		lt, rt := e.LHS.Type(), e.RHS.Type()
		switch {
		case e.Op.IsComparisonOperator() && !e.ReturnBool && lt == parser.ValueTypeVector && rt == parser.ValueTypeScalar:
			more, err := hasData(ctx, p, render, e.LHS, strip)
			return append(tried, more...), err
		case e.Op.IsComparisonOperator() && !e.ReturnBool && lt == parser.ValueTypeScalar && rt == parser.ValueTypeVector:
			more, err := hasData(ctx, p, render, e.RHS, strip)
			return append(tried, more...), err
		case e.Op.IsSetOperator():
			var errs []error
			for _, side := range []parser.Expr{e.LHS, e.RHS} {
				more, err := hasData(ctx, p, render, side, strip)
				tried = append(tried, more...)
				errs = append(errs, err)
			}
			return tried, errors.Join(errs...)
		}
	}
	return tried, noData
}

// ---------------------------------------------------------------------------
// Grafana.

type dashboard struct {
	Title         string
	UID           string
	SchemaVersion int
	Templating    struct {
		List []dashVariable
	}
	Panels []dashPanel
}

type dashVariable struct {
	Name       string
	Type       string
	Query      json.RawMessage // a string, or {"query": ...}
	Definition string
	Datasource *dashDatasource
}

// queryText is the variable's query as a string.
func (v dashVariable) queryText() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var q struct{ Query string }
	_ = json.Unmarshal(v.Query, &q)
	return q.Query
}

type dashDatasource struct {
	Type, UID string
}

type dashPanel struct {
	ID         int
	Type       string
	Title      string
	Datasource *dashDatasource
	GridPos    struct{ H, W, X, Y int }
	Targets    []struct {
		RefID      string
		Expr       string
		Datasource *dashDatasource
	}
	Panels []dashPanel // a collapsed row's
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// allPanels flattens rows.
func (d dashboard) allPanels() []dashPanel {
	var out []dashPanel
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// dashExpr is one query of the dashboard.
type dashExpr struct {
	where string // panel title and refId, or variable name
	expr  string // as written
}

func (d dashboard) exprs() []dashExpr {
	var out []dashExpr
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			out = append(out, dashExpr{where: fmt.Sprintf("panel %d %q target %s", p.ID, p.Title, tg.RefID), expr: tg.Expr})
		}
	}
	return out
}

var varRef = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]`)

// expand substitutes Grafana variables as Grafana would; a variable not in
// vars is an error.
func expand(expr string, vars map[string]string) (string, error) {
	var missing []string
	out := varRef.ReplaceAllStringFunc(expr, func(m string) string {
		sub := varRef.FindStringSubmatch(m)
		name := sub[1] + sub[2] + sub[3]
		v, ok := vars[name]
		if !ok {
			missing = append(missing, name)
			return m
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("unknown variable(s) %q in %q", missing, expr)
	}
	return out, nil
}

var labelValues = regexp.MustCompile(`^\s*label_values\((.+),\s*(\w+)\s*\)\s*$`)

// finite reports whether v is a real number.
func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func sortedKeys[M ~map[string]V, V any](m M) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
