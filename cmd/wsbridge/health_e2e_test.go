package main

import (
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// Backends as an operator sees them (issue 20), against the built binary:
// each test failed on the gateway before the connectivity model.

// readiness reads the gateway's readiness (gRPC health, service "").
func (g *gateway) readiness(t *testing.T) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	resp, err := healthpb.NewHealthClient(g.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetStatus()
}

// waitReadiness polls readiness (never a call to the backend) until it is
// want.
func (g *gateway) waitReadiness(t *testing.T, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for g.readiness(t) != want {
		if time.Now().After(deadline) {
			t.Fatalf("readiness is not %v", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Item 1: in the default lazy mode, readiness that a failed dial turned
// off comes back once the backend does, with no call to try it (a load
// balancer that routes by readiness sends none).
func TestE2EReadinessComesBackWithoutTraffic(t *testing.T) {
	addr := freeAddr(t)
	g := startGateway(t, "--backend", "ws://"+addr+"/", "--backoff-base", "50ms", "--backoff-max", "100ms")
	if got := g.readiness(t); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("before any call: %v", got)
	}
	if _, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a call with the backend down: %v", err)
	}
	g.waitReadiness(t, healthpb.HealthCheckResponse_NOT_SERVING)
	startBackend(t, addr) // back, on the same address; no call from now on
	g.waitReadiness(t, healthpb.HealthCheckResponse_SERVING)
	row := g.getStats(t).GetBackends()[0]
	if row.GetConnectivity() != wsbridgev1.BackendConnectivity_BACKEND_CONNECTIVITY_READY || !row.GetAvailable() {
		t.Fatalf("backend row %v", row)
	}
}

// Item 2: a backend that refuses connections is not available, at any
// traffic, however long after its backoff; its row says why and has its
// own last dial error.
func TestE2EDeadBackendIsNotAvailable(t *testing.T) {
	_, url := startBackend(t, "127.0.0.1:0")
	dead := "ws://" + freeAddr(t) + "/"
	g := startGateway(t, "--backend", url, "--backend", dead, "--balance", "round-robin", "--backoff-base", "50ms", "--backoff-max", "100ms")
	for range 10 {
		if _, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 { // across many backoffs, with no traffic
		time.Sleep(60 * time.Millisecond)
		row := backendRow(t, g.getStats(t), dead)
		if row.GetAvailable() || row.GetUnavailable() != wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_FAILING ||
			row.GetLastDialError() == "" || row.GetLastDialErrorAt() == nil {
			t.Fatalf("the dead backend's row: %v", row)
		}
	}
	if row := backendRow(t, g.getStats(t), url); row.GetLastDialError() != "" || !row.GetAvailable() {
		t.Fatalf("the live backend's row: %v", row)
	}
}

// Item 3: a health method the backend answers with an error (here a
// misspelt one: -32601) makes the only backend unavailable, and
// readiness follows.
func TestE2EFailingHealthCallTakesReadiness(t *testing.T) {
	_, url := startBackend(t, "127.0.0.1:0")
	g := startGateway(t, "--backend", url, "--backend-eager", "--backend-health-method", "eth_blockNumbr", "--backend-health-interval", "50ms")
	g.waitReadiness(t, healthpb.HealthCheckResponse_NOT_SERVING)
	row := g.getStats(t).GetBackends()[0]
	if row.GetAvailable() || row.GetUnavailable() != wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_HEALTH || row.GetHealthError() == "" {
		t.Fatalf("backend row %v", row)
	}
}

// Item 4: a backend that never completes its handshake holds no call
// while the other backend is connected.
func TestE2ESlowDialHoldsNoCall(t *testing.T) {
	_, url := startBackend(t, "127.0.0.1:0")
	hung, err := net.Listen("tcp", "127.0.0.1:0") // accepts nothing: handshakes hang
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hung.Close() })
	g := startGateway(t, "--backend", url, "--backend", "ws://"+hung.Addr().String()+"/", "--balance", "round-robin", "--backend-dial-timeout", "30s")
	for i := range 40 {
		// Each call has 5 s: a call handed to the hanging backend would
		// wait its 30 s dial.
		_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Timeout: durationpb.New(5 * time.Second)})
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
}

// Passive outlier detection, with toxiproxy: a backend that stops
// answering (a blackhole) is ejected after --outlier-failures timeouts in
// a row; the calls then go to the other backend, and the backend alert
// sees it with no traffic needed.
func TestE2EOutlierEjection(t *testing.T) {
	_, url1 := startBackend(t, "127.0.0.1:0")
	_, url2 := startBackend(t, "127.0.0.1:0")
	proxy, purl := proxied(t, "silent", url2)
	g := startGateway(t, "--backend", url1, "--backend", purl, "--balance", "round-robin",
		"--outlier-failures", "3", "--outlier-ejection", "1h", "--outlier-timeout", "100ms", "--backend-ping-interval", "0")
	g.waitStats(t, "both backends connected", func(st *wsbridgev1.Stats) bool {
		_, _ = g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"})
		return st.Backends[0].GetConnectivity() == wsbridgev1.BackendConnectivity_BACKEND_CONNECTIVITY_READY &&
			st.Backends[1].GetConnectivity() == wsbridgev1.BackendConnectivity_BACKEND_CONNECTIVITY_READY
	})
	// Callers' own short deadlines eject no one (they would let any client
	// eject healthy backends).
	for range 30 {
		_, _ = g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Timeout: durationpb.New(300 * time.Microsecond)})
	}
	if row := backendRow(t, g.getStats(t), purl); row.GetEjections() != 0 {
		t.Fatalf("short client deadlines ejected a healthy backend: %v", row)
	}
	// The proxied backend's replies stop coming: requests reach it, answers do not.
	if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"silence","type":"timeout","stream":"downstream","attributes":{"timeout":0}}`)); err != nil {
		t.Fatal(err)
	}
	timeouts := 0
	for range 10 {
		_, err := g.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Timeout: durationpb.New(200 * time.Millisecond)})
		if status.Code(err) == codes.DeadlineExceeded {
			timeouts++
		}
	}
	if timeouts != 3 {
		t.Fatalf("%d calls timed out, want 3 (then the silent backend is ejected)", timeouts)
	}
	row := backendRow(t, g.getStats(t), purl)
	if row.GetAvailable() || row.GetUnavailable() != wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_EJECTED || row.GetEjections() != 1 {
		t.Fatalf("the silent backend's row: %v", row)
	}
	if got := g.readiness(t); got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("readiness with one backend available: %v", got)
	}
}
