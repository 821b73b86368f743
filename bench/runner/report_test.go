package main

import (
	"strings"
	"testing"
)

func TestQuantileMS(t *testing.T) {
	var ns []int64
	for i := int64(1); i <= 1000; i++ {
		ns = append(ns, i*1e6) // 1..1000 ms
	}
	for _, tc := range []struct {
		q    float64
		want float64
	}{{0.5, 500}, {0.99, 990}, {0.999, 999}, {1, 1000}} {
		if got := quantileMS(ns, tc.q); got != tc.want {
			t.Errorf("q %v: %v ms, want %v", tc.q, got, tc.want)
		}
	}
	if got := quantileMS([]int64{7e6}, 0.999); got != 7 {
		t.Errorf("one sample: %v, want 7", got)
	}
}

func TestLatencyTableAddsOverTheBaseline(t *testing.T) {
	rows := []Row{
		{Case: "B-RPC", Payload: "20B", Concurrency: 1, P50ms: 0.1, P99ms: 0.2, P999ms: 0.5},
		{Case: "E", Payload: "20B", Concurrency: 1, P50ms: 0.25, P99ms: 0.4, P999ms: 0.6},
		{Case: "E", Payload: "20B", Concurrency: 16, P50ms: 9},
		{Case: "F", Payload: "20B", Concurrency: 1, P50ms: 0.2}, // B not run
	}
	got := latencyTable(rows)
	if len(got) != 3 {
		t.Fatalf("%d rows, want B-RPC, E and F: %+v", len(got), got)
	}
	e := got[1]
	if e.Case != "E" || e.Baseline != "B-RPC" || e.AddedP50ms == nil ||
		!near(*e.AddedP50ms, 0.15) || !near(*e.AddedP99ms, 0.2) || !near(*e.AddedP999ms, 0.1) {
		t.Errorf("E: %+v", e)
	}
	if f := got[2]; f.Case != "F" || f.AddedP50ms != nil {
		t.Errorf("F without its baseline has an added latency: %+v", f)
	}
}

func TestPeerTargetsWithoutThePeer(t *testing.T) {
	rows := []Row{{Case: "E", Payload: "20B", Concurrency: 1, P50ms: 0.3}, {Case: "E", Payload: "20B", Concurrency: 16, RPS: 1000}}
	var peer []Target
	for _, tg := range targets(rows, nil, "no proxyd binary") {
		if strings.Contains(tg.Name, "peer") {
			peer = append(peer, tg)
		}
	}
	if len(peer) != 2 {
		t.Fatalf("peer targets %+v, want calls/s at c16 and p50 at c1", peer)
	}
	for _, tg := range peer {
		if tg.Met || !strings.HasPrefix(tg.Measured, "not measured") {
			t.Errorf("%+v: want missed, not measured", tg)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
