package statsdecl

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/timestamppb"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

func sample() *wsbridgev1.Stats {
	return &wsbridgev1.Stats{
		InstanceId: "abc", StartedAt: timestamppb.Now(), UptimeMs: 1500, RequestsHandled: 7, Errors: 2,
		BackendConnected: true, BackendState: wsbridgev1.BackendState_BACKEND_STATE_CONNECTED,
		ErrorsByReason: map[string]uint64{"unavailable": 1, "canceled": 1}, Latency: &wsbridgev1.Latency{P50Ms: 1.5, Count: 3},
		Backends: []*wsbridgev1.BackendStats{
			{Url: "ws://a:1", State: wsbridgev1.BackendState_BACKEND_STATE_CONNECTED, Available: true, Connects: 2, Breaker: "closed"},
			{Url: "ws://b:2", State: wsbridgev1.BackendState_BACKEND_STATE_BACKOFF, DialFailures: 7, Breaker: "open"},
		},
	}
}

// Every field is declared, with a section and a help line, and every
// metric name is unique.
func TestEveryFieldIsDeclared(t *testing.T) {
	if len(Fields) < 40 {
		t.Fatalf("%d fields", len(Fields))
	}
	metrics := map[string]bool{}
	for _, f := range Fields {
		if f.Opts.GetHelp() == "" || f.Opts.GetSection() == wsbridgev1.StatSection_STAT_SECTION_UNSPECIFIED {
			t.Errorf("%s: no help or section", f.Desc.Name())
		}
		if f.Metric != "" {
			if metrics[f.Metric] {
				t.Errorf("metric %s twice", f.Metric)
			}
			metrics[f.Metric] = true
		}
	}
}

// /__stats: valid JSON, the seed's fields first in the seed's order with
// plain numbers, then every other field.
func TestSeed(t *testing.T) {
	out := Seed(sample())
	var got map[string]any
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.UseNumber()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	want := []string{"isolateId", "startedAt", "uptimeMs", "requestsHandled", "wsUpgrades", "httpProxied", "messagesProxied",
		"backendConnects", "backendReconnects", "errors", "backendConnected", "activeClients", "requestsPerSecond"}
	last := -1
	for _, k := range want {
		i := bytes.Index(out, []byte(`"`+k+`":`))
		if i < 0 || i < last {
			t.Fatalf("%s missing or out of the seed's order:\n%s", k, out)
		}
		last = i
	}
	for _, f := range Fields {
		if _, ok := got[f.Seed]; !ok {
			t.Errorf("/__stats lacks %s", f.Seed)
		}
	}
	if got["requestsHandled"] != json.Number("7") || got["backendState"] != "connected" || got["backendConnected"] != true {
		t.Fatalf("values: %s", out)
	}
	if r := got["errorsByReason"].(map[string]any); r["unavailable"] != json.Number("1") {
		t.Fatalf("errorsByReason: %v", r)
	}
}

// /metrics: every field that has a metric, under its declared name, with
// enums and maps as labelled series.
func TestCollector(t *testing.T) {
	c := Collector(sample)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatal(err)
	}
	if n < 30 {
		t.Fatalf("%d series", n)
	}
	for name, want := range map[string]string{
		"wsbridge_requests_handled_total": "7",
		"wsbridge_uptime_seconds":         "1.5",
	} {
		if got := testutil.ToFloat64(singleMetric(t, reg, name)); strconv.FormatFloat(got, 'f', -1, 64) != want {
			t.Errorf("%s = %v, want %s", name, got, want)
		}
	}
	body := gatherText(t, reg)
	// No gauge holds what a Prometheus query computes (a rate) or repeats
	// another (backend_state says what backend_connected did).
	for _, gone := range []string{"wsbridge_backend_connected", "wsbridge_requests_per_second", "wsbridge_messages_proxied_total"} {
		if strings.Contains(body, gone+" ") || strings.Contains(body, gone+"{") {
			t.Errorf("%s is still a metric", gone)
		}
	}
	for _, want := range []string{`wsbridge_backend_state{state="connected"} 1`, `wsbridge_backend_state{state="backoff"} 0`,
		`wsbridge_errors_by_reason_total{reason="unavailable"} 1`, `wsbridge_per_backend_dial_failures_total{backend="ws://b:2"} 7`,
		`wsbridge_per_backend_state{backend="ws://a:1",state="connected"} 1`, `wsbridge_per_backend_available{backend="ws://a:1"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("lacks %s", want)
		}
	}
	all := Fields
	for _, f := range Fields {
		all = append(all, f.Rows...)
	}
	for _, f := range all {
		if f.Metric != "" && !strings.Contains(body, "# HELP "+f.Metric+" ") && !f.Desc.IsMap() {
			t.Errorf("%s not exported", f.Metric)
		}
	}
}

func singleMetric(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return prometheus.CollectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == name {
				v := mf.GetMetric()[0]
				x := v.GetCounter().GetValue() + v.GetGauge().GetValue()
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "h", nil, nil), prometheus.GaugeValue, x)
			}
		}
	})
}

func gatherText(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		b.WriteString("# HELP " + mf.GetName() + " " + mf.GetHelp() + "\n")
		for _, m := range mf.GetMetric() {
			b.WriteString(mf.GetName())
			if len(m.GetLabel()) > 0 {
				b.WriteString("{")
				for i, l := range m.GetLabel() {
					if i > 0 {
						b.WriteString(",")
					}
					b.WriteString(l.GetName() + `="` + l.GetValue() + `"`)
				}
				b.WriteString("}")
			}
			b.WriteString(" " + strconv.FormatFloat(m.GetCounter().GetValue()+m.GetGauge().GetValue(), 'f', -1, 64) + "\n")
		}
	}
	return b.String()
}

func TestTableAndSchema(t *testing.T) {
	var b bytes.Buffer
	if err := Table(&b, sample()); err != nil {
		t.Fatal(err)
	}
	for _, f := range Fields {
		if f.Rows != nil {
			for _, row := range []string{"backend ws://a:1", "backend ws://b:2"} {
				if !strings.Contains(b.String(), "  "+row+"\n") {
					t.Errorf("the table lacks the row %q", row)
				}
			}
			for _, rf := range f.Rows[1:] {
				if !strings.Contains(b.String(), "    "+rf.Title+"  ") {
					t.Errorf("the table's rows lack %q", rf.Title)
				}
			}
			continue
		}
		if !strings.Contains(b.String(), "  "+f.Title+"  ") {
			t.Errorf("the table lacks %q", f.Title)
		}
	}
	if !strings.Contains(b.String(), "canceled 1, unavailable 1") || !regexp.MustCompile(`(?m)^  uptime +2s$`).MatchString(b.String()) {
		t.Errorf("table:\n%s", b.String())
	}
	var schema []SchemaField
	if err := json.Unmarshal(Schema(), &schema); err != nil || len(schema) != len(Fields) {
		t.Fatalf("schema: %d fields, %v", len(schema), err)
	}
}

// No production Go code outside this package and the generated code
// writes a stat's metric name or help as a string: a second hand-written
// list of the counters (the drift this package ended) would have to.
// Reading a field by its JSON name (a client of /v1/stats) is a use, not a
// declaration.
func TestNamesAreDeclaredOnce(t *testing.T) {
	names := map[string]bool{}
	for _, f := range Fields {
		names[f.Opts.GetHelp()] = true
		if f.Metric != "" {
			names[f.Metric] = true
		}
		if f.Opts.GetSeed() != "" && f.Seed != f.JSON {
			names[f.Seed] = true
		}
	}
	root := "../.."
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "gen", "statsdecl", ".git", "node_modules", ".bin":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		file, err := parser.ParseFile(token.NewFileSet(), path, src, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(file, func(n ast.Node) bool {
			if _, ok := n.(*ast.ImportSpec); ok {
				return false
			}
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil && names[s] {
					t.Errorf("%s writes the stat name %q: read it from the declaration instead", path, s)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
