package window

import (
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestLatencyPercentilesAndAging(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	l := NewLatency(6, 10*time.Second, clk.now)
	for i := 1; i <= 100; i++ {
		l.Record(time.Duration(i) * time.Millisecond)
	}
	s := l.Summary()
	if s.Count != 100 || s.Window != time.Minute {
		t.Fatalf("count %d window %v, want 100 and 1m", s.Count, s.Window)
	}
	near := func(got, want float64) bool { return got >= want*0.98 && got <= want*1.02 }
	if !near(s.P50, 50) || !near(s.P90, 90) || !near(s.P99, 99) {
		t.Fatalf("p50/p90/p99 = %v/%v/%v, want about 50/90/99", s.P50, s.P90, s.P99)
	}
	clk.advance(30 * time.Second)
	l.Record(500 * time.Millisecond)
	if s := l.Summary(); s.Count != 101 {
		t.Fatalf("after 30s count %d, want 101 (still in window)", s.Count)
	}
	clk.advance(35 * time.Second) // the first 100 are now 65 s old
	if s := l.Summary(); s.Count != 1 || !near(s.P50, 500) {
		t.Fatalf("after 65s count %d p50 %v, want 1 and 500", s.Count, s.P50)
	}
	clk.advance(time.Hour)
	if s := l.Summary(); s.Count != 0 {
		t.Fatalf("after an idle hour count %d, want 0", s.Count)
	}
	l.Record(2 * time.Hour) // beyond the histogram's range: clamped, not lost
	if s := l.Summary(); s.Count != 1 || s.P99 < 3500e3 {
		t.Fatalf("clamped value: count %d p99 %v ms", s.Count, s.P99)
	}
}

func TestRate(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	r := NewRate(10, clk.now)
	for range 50 {
		r.Add()
	}
	clk.advance(time.Second)
	for range 50 {
		r.Add()
	}
	if got := r.PerSecond(); got != 10 {
		t.Fatalf("rate %v, want 10 (100 events / 10 s)", got)
	}
	clk.advance(9 * time.Second) // the first second's 50 fall out
	if got := r.PerSecond(); got != 5 {
		t.Fatalf("rate %v, want 5", got)
	}
	clk.advance(time.Minute)
	if got := r.PerSecond(); got != 0 {
		t.Fatalf("rate %v after a quiet minute, want 0", got)
	}
}
