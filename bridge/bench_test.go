package bridge

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	"github.com/wsbridge/wsbridge/jsonrpc"
)

var benchParams = json.RawMessage(`{"k":"0123456789abcd"}`)

// BenchmarkEncodeRequest: building one request frame.
func BenchmarkEncodeRequest(b *testing.B) {
	method := jsonrpc.AppendString(nil, "eth_getBalance")
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for i := range b.N {
		buf = jsonrpc.AppendRequest(buf[:0], uint64(i), true, method, benchParams)
	}
}

// BenchmarkRouteReply: one reply frame, from bytes to its caller.
func BenchmarkRouteReply(b *testing.B) {
	_, c := bareConn()
	frame := []byte(`{"jsonrpc":"2.0","id":12345,"result":{"k":"0123456789abcd"}}`)
	o := newTestOp(12345)
	b.ReportAllocs()
	for range b.N {
		c.pending.add(o)
		c.handleFrame(frame)
		<-o.owner.(resultChan)
	}
}

// benchBridge is a Bridge to an in-process backend over loopback (both
// ends in this process), with its connection open.
func benchBridge(b *testing.B) *Bridge {
	srv := bridgetest.NewServer(b, nil)
	br, err := New(Options{URL: srv.URL()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.Close() })
	if _, err := br.Call(context.Background(), "echo", benchParams, CallOptions{}); err != nil {
		b.Fatal(err)
	}
	return br
}

// BenchmarkCall: a whole call through a Bridge, two callers at once.
func BenchmarkCall(b *testing.B) {
	br := benchBridge(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := br.Call(ctx, "echo", benchParams, CallOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkCallOneCaller: one caller at a time, each call after the
// previous reply: the latency of a call at low load, where hand-offs
// between goroutines show (the fast path writes from the caller).
func BenchmarkCallOneCaller(b *testing.B) {
	br := benchBridge(b)
	ctx := context.Background()
	b.ReportAllocs()
	for range b.N {
		if _, err := br.Call(ctx, "echo", benchParams, CallOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGo: the same with Bridge.Go, which needs no goroutine per call.
func BenchmarkGo(b *testing.B) {
	br := benchBridge(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		done := make(chan error, 1)
		for pb.Next() {
			br.Go("echo", benchParams, CallOptions{}, func(_ json.RawMessage, err error) { done <- err })
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
	})
}
