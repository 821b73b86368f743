package bridge

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// OnStateChange may call the Bridge's methods: it runs on a goroutine of
// its own, never under a lock of the Bridge (it once ran with a slot's
// lock held, and a hook calling Stats deadlocked).
func TestOnStateChangeMayCallTheBridge(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	var b *Bridge
	ready := make(chan struct{})
	seen := make(chan State, 100)
	b = startBridge(t, srv.URL(), Options{OnStateChange: func(st State) {
		<-ready
		_ = b.Stats()
		_ = b.Ready()
		select {
		case seen <- st:
		default:
		}
	}})
	close(ready)
	if _, err := b.Call(ctxT(t), "echo", nil, CallOptions{}); err != nil {
		t.Fatal(err)
	}
	for st := range seen {
		if st == StateConnected {
			return
		}
	}
}

// OnStateChange is not called after Close returns.
func TestOnStateChangeStopsAtClose(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	var closed atomic.Bool
	b, err := New(Options{URL: srv.URL(), Eager: true, OnStateChange: func(State) {
		if closed.Load() {
			t.Error("OnStateChange called after Close returned")
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	nextConn(t, srv)
	b.Close()
	closed.Store(true)
}

// Once Consumer.Close has returned, its deliver function is not running
// and is never called again, while notifications keep arriving.
func TestNoDeliveryAfterConsumerClose(t *testing.T) {
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for ctx.Err() == nil {
			if c.WriteRaw(ctx, `{"jsonrpc":"2.0","method":"tick","params":[]}`) != nil {
				return
			}
		}
	})
	b := startBridge(t, srv.URL(), Options{})
	for range 50 {
		var closed atomic.Bool
		got := make(chan struct{}, 1)
		c := b.NewConsumer(func(string, json.RawMessage) {
			if closed.Load() {
				t.Error("delivery after Close returned")
			}
			select {
			case got <- struct{}{}:
			default:
			}
		})
		c.Listen("tick")
		<-got
		c.Close()
		closed.Store(true)
	}
}

// Notifications held back for a subscribe reply past the hold limit are
// dropped and counted.
func TestHeldNotificationsPastTheLimitAreCounted(t *testing.T) {
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			_ = c.Reply(ctx, r.ID, "0x1")
			for range maxHeld + 10 {
				_ = c.WriteRaw(ctx, `{"jsonrpc":"2.0","method":"x_subscription","params":{"subscription":"0x1","result":1}}`)
			}
			_ = c.WriteRaw(ctx, `{"jsonrpc":"2.0","method":"done"}`)
		}
	})
	b := startBridge(t, srv.URL(), Options{})
	var delivered atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	c := b.NewConsumer(func(method string, _ json.RawMessage) {
		if method == "done" {
			once.Do(func() { close(done) })
			return
		}
		delivered.Add(1)
	})
	defer c.Close()
	c.Listen("done")
	_, release, err := c.CallHeld(ctxT(t), "x_subscribe", nil, CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("no end marker")
	}
	release()
	if got, dropped := delivered.Load(), b.Stats().Dropped; got != maxHeld || dropped != 10 {
		t.Fatalf("delivered %d, dropped %d; want %d and 10", got, dropped, maxHeld)
	}
}
