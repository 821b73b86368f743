package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Report is the JSON written under bench/results.
type Report struct {
	Started string `json:"started"`
	Took    string `json:"took"`
	// Commit is the code measured (`git rev-parse --short HEAD`, with
	// "-dirty" when tracked files were changed), for docs/performance.md.
	Commit   string `json:"commit"`
	Machine  string `json:"machine"`
	Duration string `json:"cell_duration"`
	// FDLimit is the RLIMIT_NOFILE every server and client ran with.
	FDLimit uint64       `json:"fd_limit"`
	Notes   []string     `json:"notes,omitempty"`
	Peer    *PeerInfo    `json:"peer,omitempty"`
	Rows    []Row        `json:"rows"`
	Latency []LatencyRow `json:"latency_c1"`
	Memory  *Mem         `json:"memory,omitempty"`
	Targets []Target     `json:"targets"`
}

// Target is one of the issues' targets, evaluated.
type Target struct {
	Name     string `json:"name"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// LatencyRow is one face's latency at concurrency 1 and, for a face, what
// it adds to the direct call it stands in front of.
type LatencyRow struct {
	Payload  string  `json:"payload"`
	Case     string  `json:"case"`
	What     string  `json:"what"`
	Baseline string  `json:"baseline,omitempty"`
	P50ms    float64 `json:"p50_ms"`
	P99ms    float64 `json:"p99_ms"`
	P999ms   float64 `json:"p999_ms"`
	// Added* are the face's quantile minus the baseline's; absent for a
	// baseline, or when the baseline was not run.
	AddedP50ms  *float64 `json:"added_p50_ms,omitempty"`
	AddedP99ms  *float64 `json:"added_p99_ms,omitempty"`
	AddedP999ms *float64 `json:"added_p999_ms,omitempty"`
}

// latencyFaces lists, in print order, the cases of the concurrency-1 table:
// the direct baselines first, then each face with the direct call it is
// compared with (the same protocol to the backend, minus the gateway).
var latencyFaces = []struct{ c, what, baseline string }{
	{"A", "bare grpc-go echo server (direct gRPC)", ""},
	{"B", "demo backend, direct WebSocket", ""},
	{"B-RPC", "demo backend, direct HTTP POST", ""},
	{"C", "wsbridge gRPC Call", "A"},
	{"T", "wsbridge typed gRPC (bench.v1.Bench/Echo)", "A"},
	{"D", "wsbridge REST /v1/call", "B-RPC"},
	{"E", "wsbridge /rpc", "B-RPC"},
	{"F", "wsbridge /ws", "B"},
	{"P-RPC", "proxyd HTTP JSON-RPC (peer)", "B-RPC"},
	{"P-WS", "proxyd WebSocket (peer)", "B"},
}

func latencyTable(rows []Row) []LatencyRow {
	var out []LatencyRow
	var payloads []string
	for _, r := range rows {
		if r.Concurrency == 1 && !slices.Contains(payloads, r.Payload) {
			payloads = append(payloads, r.Payload)
		}
	}
	for _, p := range payloads {
		for _, f := range latencyFaces {
			r := find(rows, f.c, p, 1)
			if r == nil {
				continue
			}
			lr := LatencyRow{Payload: p, Case: f.c, What: f.what, Baseline: f.baseline, P50ms: r.P50ms, P99ms: r.P99ms, P999ms: r.P999ms}
			if b := find(rows, f.baseline, p, 1); b != nil {
				d50, d99, d999 := r.P50ms-b.P50ms, r.P99ms-b.P99ms, r.P999ms-b.P999ms
				lr.AddedP50ms, lr.AddedP99ms, lr.AddedP999ms = &d50, &d99, &d999
			}
			out = append(out, lr)
		}
	}
	return out
}

func find(rows []Row, c, payload string, conc int) *Row {
	for i := range rows {
		if rows[i].Case == c && rows[i].Payload == payload && rows[i].Concurrency == conc {
			return &rows[i]
		}
	}
	return nil
}

// targets evaluates the issues' targets on what was run; a target whose
// cases were not selected is left out, except the peer's, which are listed
// as missed with the reason when the peer could not run.
func targets(rows []Row, mem *Mem, peerSkipped string) []Target {
	var ts []Target
	add := func(name string, ok bool, format string, args ...any) {
		ts = append(ts, Target{Name: name, Measured: fmt.Sprintf(format, args...), Met: ok})
	}
	p := "20B"

	// Issue 14: latency of one caller, throughput kept, idle clients, the peer.
	for _, f := range []struct{ face, base, name string }{{"E", "B-RPC", "/rpc"}, {"F", "B", "/ws"}} {
		if r, b := find(rows, f.face, p, 1), find(rows, f.base, p, 1); r != nil && b != nil {
			d := r.P50ms - b.P50ms
			add(fmt.Sprintf("#14 %s (%s) adds <= 0.10 ms to the p50 of a direct call (%s) at concurrency 1", f.name, f.face, f.base), d <= 0.10,
				"+%.3f ms (%s %.3f, %s %.3f)", d, f.base, b.P50ms, f.face, r.P50ms)
		}
	}
	if a, c := find(rows, "A", p, 1), find(rows, "C", p, 1); a != nil && c != nil {
		d := c.P50ms - a.P50ms
		add("#14 C p50 <= A p50 + 0.10 ms at concurrency 1", d <= 0.10, "+%.3f ms (A %.3f, C %.3f)", d, a.P50ms, c.P50ms)
	}
	for _, face := range []string{"C", "T", "D", "E", "F"} {
		if r := find(rows, face, p, 1); r != nil {
			q := r.P99ms / r.P50ms
			add(fmt.Sprintf("#14 %s p99 <= 2x p50 at concurrency 1", face), q <= 2, "%.2fx (p50 %.3f, p99 %.3f ms)", q, r.P50ms, r.P99ms)
		}
	}
	if a, c := find(rows, "A", p, 64), find(rows, "C", p, 64); a != nil && c != nil {
		r := c.RPS / a.RPS
		add("#14 C >= 72% of A's calls/s at concurrency 64", r >= 0.72, "%.0f%%", r*100)
	}
	if b, f := find(rows, "B", p, 64), find(rows, "F", p, 64); b != nil && f != nil {
		r := f.RPS / b.RPS
		add("#14 F (/ws pipelined) >= 67% of B at concurrency 64", r >= 0.67, "%.0f%%", r*100)
	}
	if mem != nil {
		if run := mem.idle(10000); run != nil {
			add("#14 <= 10 KiB gateway RSS per idle /ws client at 10,000 clients", run.Error == "" && run.KiBPerIdleClient <= 10,
				"%.1f KiB %s", run.KiBPerIdleClient, run.Error)
		}
		if run := mem.idle(50000); run != nil {
			add("#14 50,000 idle /ws clients held with no error", run.Held && run.Error == "", "%s", idleMeasured(run))
		}
	}
	for _, f := range []struct{ ours, peer string }{{"E", "P-RPC"}, {"F", "P-WS"}} {
		if find(rows, f.ours, p, 16) == nil && find(rows, f.ours, p, 1) == nil {
			continue
		}
		for _, conc := range []int{16, 64} {
			name := fmt.Sprintf("#14 %s >= 1.2x the peer's (%s) calls/s at concurrency %d", f.ours, f.peer, conc)
			o, q := find(rows, f.ours, p, conc), find(rows, f.peer, p, conc)
			switch {
			case o != nil && q != nil:
				r := o.RPS / q.RPS
				add(name, r >= 1.2, "%.2fx (%.0f vs %.0f calls/s)", r, o.RPS, q.RPS)
			case o != nil && peerSkipped != "":
				add(name, false, "not measured: the peer did not run (see the note above)")
			}
		}
		name := fmt.Sprintf("#14 %s p50 <= the peer's (%s) at concurrency 1", f.ours, f.peer)
		o, q := find(rows, f.ours, p, 1), find(rows, f.peer, p, 1)
		switch {
		case o != nil && q != nil:
			add(name, o.P50ms <= q.P50ms, "%.3f vs %.3f ms", o.P50ms, q.P50ms)
		case o != nil && peerSkipped != "":
			add(name, false, "not measured: the peer did not run (see the note above)")
		}
	}

	// The earlier issues' targets, kept so that a regression shows.
	if a, c := find(rows, "A", p, 64), find(rows, "C", p, 64); a != nil && c != nil {
		r := c.RPS / a.RPS
		add("C >= 60% of A's calls/s at concurrency 64", r >= 0.6, "%.0f%%", r*100)
	}
	if a, c := find(rows, "A", p, 1), find(rows, "C", p, 1); a != nil && c != nil {
		d := c.P50ms - a.P50ms
		add("C p50 at concurrency 1 within 0.2 ms of A's", d <= 0.2, "+%.3f ms (A %.3f, C %.3f)", d, a.P50ms, c.P50ms)
	}
	if ar, d := find(rows, "A-REST", p, 64), find(rows, "D", p, 64); ar != nil && d != nil {
		add("D >= A-REST (grpc-gateway proxying to a grpc-go server) at concurrency 64", d.RPS >= ar.RPS, "%.0f vs %.0f calls/s (%.2fx)", d.RPS, ar.RPS, d.RPS/ar.RPS)
	}
	if b, f := find(rows, "B", p, 64), find(rows, "F", p, 64); b != nil && f != nil {
		r := f.RPS / b.RPS
		add("F (/ws pipelined) >= 50% of B at concurrency 64", r >= 0.5, "%.0f%%", r*100)
	}
	if c, g := find(rows, "C", p, 16), find(rows, "G", p, 16); c != nil && g != nil {
		r := c.RPS / g.RPS
		add("Loopback, concurrency 16: C >= 3x G", r >= 3, "%.1fx", r)
	}
	if c, g := find(rows, "C-WAN", p, 16), find(rows, "G-WAN", p, 16); c != nil && g != nil {
		r := c.RPS / g.RPS
		add("WAN, concurrency 16: C >= 2.5x G in calls/s", r >= 2.5, "%.1fx", r)
		q := c.P50ms / g.P50ms
		add("WAN, concurrency 16: C p50 <= 0.4x G p50", q <= 0.4, "%.2fx (C %.2f ms, G %.2f ms)", q, c.P50ms, g.P50ms)
	}
	if c, b2 := find(rows, "C-1B", p, 16), find(rows, "C-2B", p, 16); c != nil && b2 != nil {
		r := b2.RPS / c.RPS
		add("Two backends (least-inflight), concurrency 16: calls/s vs one backend (no target; for the record)", true, "%.2fx (%.0f vs %.0f calls/s)", r, b2.RPS, c.RPS)
	}
	if h, sl := find(rows, "C-HEDGE", p, 16), find(rows, "C-SLOW", p, 16); h != nil && sl != nil {
		add("One backend 200 ms slow, --hedge-methods echo --hedge-after 20ms: echo p99 < 60 ms", h.P99ms < 60, "p99 %.1f ms (without hedging %.1f ms)", h.P99ms, sl.P99ms)
	}
	for _, payload := range []string{"20B", "1KiB"} {
		if c, ty := find(rows, "C-T", payload, 64), find(rows, "T", payload, 64); c != nil && ty != nil && c.CPUPer10k > 0 {
			r := ty.CPUPer10k / c.CPUPer10k
			add(fmt.Sprintf("Typed call (bench.v1.Bench/Echo) <= 1.15x the gateway CPU of Call, %s, concurrency 64", payload), r <= 1.15,
				"%.2fx (%.3f vs %.3f CPU s per 10k calls)", r, ty.CPUPer10k, c.CPUPer10k)
		}
	}
	if mem != nil {
		if run := mem.idle(10000); run != nil {
			add("<= 40 KiB gateway RSS per idle /ws client (10,000 clients)", run.Error == "" && run.KiBPerIdleClient <= 40, "%.1f KiB", run.KiBPerIdleClient)
		}
		add("<= 2 KiB per pending call", mem.BytesPerPending <= 2048, "%.0f bytes", mem.BytesPerPending)
		ok := mem.PendingErrors == 0 && mem.PendingOK == int64(mem.Pending) && mem.Error == ""
		add("zero errors in the pending-calls run", ok, "%d of %d pending calls ok, %d errors %s", mem.PendingOK, mem.Pending, mem.PendingErrors, mem.Error)
	}
	return ts
}

func idleMeasured(run *IdleRun) string {
	if run.Error != "" {
		return run.Error
	}
	return fmt.Sprintf("%d held, %d dropped, %.1f KiB each", run.Clients, run.Closed, run.KiBPerIdleClient)
}

func printMarkdown(w io.Writer, r Report) {
	fmt.Fprintf(w, "Commit %s. Machine: %s. Each cell: %s measured after a warm-up. Run took %s.\n", r.Commit, r.Machine, r.Duration, r.Took)
	if r.Peer != nil {
		fmt.Fprintf(w, "Peer: %s %s (%s).\n", r.Peer.Name, r.Peer.Version, r.Peer.Setup)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "Note: %s\n", n)
	}
	if len(r.Rows) > 0 {
		fmt.Fprintln(w, "\n| case | payload | conc | calls/s | p50 ms | p99 ms | p99.9 ms | CPU s /10k calls | peak RSS MiB | errors | measured |")
		fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	}
	for _, row := range r.Rows {
		fmt.Fprintf(w, "| %s | %s | %d | %.0f | %.3f | %.3f | %.3f | %.3f | %.1f | %d | %s |\n", row.Case, row.Payload, row.Concurrency,
			row.RPS, row.P50ms, row.P99ms, row.P999ms, row.CPUPer10k, float64(row.PeakRSSKiB)/1024, row.Errors, row.Measured)
	}

	if len(r.Latency) > 0 {
		fmt.Fprintln(w, "\nOne caller (concurrency 1): latency, and what each face adds over the direct call to the same server (face minus baseline).")
		fmt.Fprintln(w, "\n| payload | case | what | p50 ms | p99 ms | p99.9 ms | baseline | added p50 ms | added p99 ms | added p99.9 ms |")
		fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---|---:|---:|---:|")
		for _, l := range r.Latency {
			added := func(v *float64) string {
				if v == nil {
					return ""
				}
				return fmt.Sprintf("%+.3f", *v)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %.3f | %.3f | %.3f | %s | %s | %s | %s |\n", l.Payload, l.Case, l.What, l.P50ms, l.P99ms, l.P999ms,
				l.Baseline, added(l.AddedP50ms), added(l.AddedP99ms), added(l.AddedP999ms))
		}
	}

	if m := r.Memory; m != nil {
		fmt.Fprintln(w)
		for _, run := range m.Idle {
			if run.Error != "" && run.RSSDeltaKiB == 0 {
				fmt.Fprintf(w, "Memory: %d idle /ws clients: %s.\n", run.Clients, run.Error)
				continue
			}
			fmt.Fprintf(w, "Memory: %d idle /ws clients: +%d KiB RSS (%.1f KiB each); %d dropped while held%s.\n",
				run.Clients, run.RSSDeltaKiB, run.KiBPerIdleClient, run.Closed, prefixed("; ", run.Error))
		}
		fmt.Fprintf(w, "Memory: %d calls in flight (in_flight %d when measured): +%d KiB RSS (%.0f bytes each); %d ok, %d errors%s.\n",
			m.Pending, m.PendingInFlightAt, m.PendingRSSDelta, m.BytesPerPending, m.PendingOK, m.PendingErrors, prefixed("; ", m.Error))
	}

	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "\n| target | measured | met |\n|---|---|---|")
	}
	for _, t := range r.Targets {
		met := "missed"
		if t.Met {
			met = "met"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", t.Name, strings.TrimSpace(t.Measured), met)
	}
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}
