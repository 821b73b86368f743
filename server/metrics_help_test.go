package server

import (
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Every metric's HELP text agrees with the unit its name states: a
// _seconds metric speaks of no other unit (the review found
// "wsbridge_uptime_seconds Milliseconds since start"), a _bytes metric of
// no time unit, and a _total metric is a counter (and every counter is
// _total).
func TestMetricHelpMatchesItsUnit(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	_, body := get(t, h.base+"/metrics")
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for name, f := range families {
		if !strings.HasPrefix(name, "wsbridge_") {
			continue // the Go and process collectors' own
		}
		help := strings.ToLower(f.GetHelp())
		switch {
		case strings.HasSuffix(name, "_seconds") || strings.HasSuffix(name, "_seconds_total"):
			for _, other := range []string{"millisecond", " ms", "microsecond", "nanosecond", "byte"} {
				if strings.Contains(help, other) {
					t.Errorf("%s: HELP %q speaks of %q", name, f.GetHelp(), strings.TrimSpace(other))
				}
			}
		case strings.HasSuffix(name, "_bytes") || strings.HasSuffix(name, "_bytes_total"):
			for _, other := range []string{"second", " ms"} {
				if strings.Contains(help, other) {
					t.Errorf("%s: HELP %q speaks of %q", name, f.GetHelp(), strings.TrimSpace(other))
				}
			}
		}
		counter := f.GetType().String() == "COUNTER"
		if counter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s is a %s: a counter's name ends in _total, and only a counter's", name, f.GetType())
		}
		checked++
	}
	if checked < 20 {
		t.Fatalf("only %d wsbridge metrics", checked)
	}
}
