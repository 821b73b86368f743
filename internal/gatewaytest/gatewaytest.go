// Package gatewaytest runs a wsbridge gateway, and the demo backend, in the
// test's process on loopback ports, for the test modules outside the main
// one (interop/, browser/). Both stop, and are waited for, when the test ends.
package gatewaytest

import (
	"context"
	"testing"

	"github.com/wsbridge/wsbridge/backend"
	"github.com/wsbridge/wsbridge/backend/backendtest"
	"github.com/wsbridge/wsbridge/server"
)

// Backend starts the demo backend and returns its WebSocket URL.
func Backend(t testing.TB) string {
	t.Helper()
	url, _ := backendtest.Start(t, backend.Options{})
	return url
}

// Start runs a gateway with opts; empty listen addresses become free
// loopback ports. A Run error at the end of the test fails the test.
func Start(t testing.TB, opts server.Options) *server.Server {
	t.Helper()
	if opts.GRPCAddr == "" {
		opts.GRPCAddr = "127.0.0.1:0"
	}
	if opts.HTTPAddr == "" {
		opts.HTTPAddr = "127.0.0.1:0"
	}
	srv, err := server.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return srv
}
