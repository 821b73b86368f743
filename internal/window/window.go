// Package window keeps figures over a recent window of time: latency
// percentiles (HDR histograms rotated every slice) and event rates (per-second
// buckets). Both rotate lazily when they are used, so they need no goroutine.
package window

import (
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latency records durations and reports percentiles over the last
// Slices*Slice of time. It is safe for concurrent use.
type Latency struct {
	slice  time.Duration
	slices int
	now    func() time.Time

	mu      sync.Mutex
	hist    *hdrhistogram.WindowedHistogram // guarded by mu
	rotated time.Time                       // guarded by mu: start of the current slice
}

// Summary is a latency snapshot in milliseconds.
type Summary struct {
	P50, P90, P99 float64
	Count         int64
	Window        time.Duration
}

// NewLatency returns a Latency over slices*slice. now is the clock (nil for
// time.Now).
func NewLatency(slices int, slice time.Duration, now func() time.Time) *Latency {
	if now == nil {
		now = time.Now
	}
	// 1 µs to 1 hour, 2 significant digits: about 30 KiB per slice.
	return &Latency{
		slice:   slice,
		slices:  slices,
		now:     now,
		hist:    hdrhistogram.NewWindowed(slices, 1, int64(time.Hour/time.Microsecond), 2),
		rotated: now(),
	}
}

// rotate drops slices that have aged out. l.mu must be held.
func (l *Latency) rotate(now time.Time) {
	for n := 0; now.Sub(l.rotated) >= l.slice; n++ {
		if n >= l.slices {
			// Idle for longer than the whole window: every slice is stale.
			l.rotated = now
			for range l.slices {
				l.hist.Rotate()
			}
			return
		}
		l.hist.Rotate()
		l.rotated = l.rotated.Add(l.slice)
	}
}

// Record adds one duration.
func (l *Latency) Record(d time.Duration) {
	us := d.Microseconds()
	if us < 1 {
		us = 1
	}
	l.mu.Lock()
	l.rotate(l.now())
	if max := l.hist.Current.HighestTrackableValue(); us > max {
		us = max
	}
	_ = l.hist.Current.RecordValue(us) // in range, so it cannot fail
	l.mu.Unlock()
}

// Summary returns the percentiles over the window.
func (l *Latency) Summary() Summary {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rotate(l.now())
	merged := l.hist.Merge() // reused by the next Merge: read it under mu
	ms := func(q float64) float64 { return float64(merged.ValueAtQuantile(q)) / 1000 }
	return Summary{
		P50: ms(50), P90: ms(90), P99: ms(99),
		Count:  merged.TotalCount(),
		Window: time.Duration(l.slices) * l.slice,
	}
}

// Rate counts events per second over the last n seconds. It is safe for
// concurrent use.
type Rate struct {
	now func() time.Time

	mu      sync.Mutex
	buckets []uint64 // guarded by mu: events per second, ring indexed by unix second
	last    int64    // guarded by mu: the unix second of the newest bucket
}

// NewRate returns a Rate over the last seconds seconds. now is the clock (nil
// for time.Now).
func NewRate(seconds int, now func() time.Time) *Rate {
	if now == nil {
		now = time.Now
	}
	return &Rate{now: now, buckets: make([]uint64, seconds), last: now().Unix()}
}

// advance clears buckets for the seconds between r.last and sec. r.mu must be held.
func (r *Rate) advance(sec int64) {
	n := int64(len(r.buckets))
	if sec-r.last >= n {
		clear(r.buckets)
	} else {
		for s := r.last + 1; s <= sec; s++ {
			r.buckets[s%n] = 0
		}
	}
	if sec > r.last {
		r.last = sec
	}
}

// Add counts one event now.
func (r *Rate) Add() {
	r.mu.Lock()
	sec := r.now().Unix()
	r.advance(sec)
	r.buckets[sec%int64(len(r.buckets))]++
	r.mu.Unlock()
}

// PerSecond returns the mean events per second over the window.
func (r *Rate) PerSecond() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.advance(r.now().Unix())
	var sum uint64
	for _, b := range r.buckets {
		sum += b
	}
	return float64(sum) / float64(len(r.buckets))
}
