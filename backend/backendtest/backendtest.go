// Package backendtest runs the demo backend on a loopback port for tests.
// The backend stops, and is waited for, when the test ends.
package backendtest

import (
	"context"
	"net"
	"testing"

	"github.com/wsbridge/wsbridge/backend"
)

// Start serves a demo backend with opts and returns its WebSocket URL and
// the backend (whose counters show what reached it).
func Start(t testing.TB, opts backend.Options) (string, *backend.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	be := backend.New(opts)
	go func() {
		defer close(done)
		_ = be.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return "ws://" + ln.Addr().String() + "/", be
}
