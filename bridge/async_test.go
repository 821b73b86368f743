package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

type goOutcome struct {
	res json.RawMessage
	err error
}

func goCall(b *Bridge, method, params string, co CallOptions) (chan goOutcome, func()) {
	out := make(chan goOutcome, 1)
	cancel := b.Go(method, json.RawMessage(params), co, func(res json.RawMessage, err error) { out <- goOutcome{res, err} })
	return out, cancel
}

func TestGoCalls(t *testing.T) {
	srv := bridgetest.NewServer(t, nil)
	b := startBridge(t, srv.URL(), Options{})
	// The first call finds no connection: it dials on a goroutine of the Bridge.
	out, _ := goCall(b, "echo", `[0]`, CallOptions{})
	if o := <-out; o.err != nil || string(o.res) != `[0]` {
		t.Fatalf("first call: %s %v", o.res, o.err)
	}
	// Then many at once on the open connection, each getting its own reply.
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			out, _ := goCall(b, "echo", fmt.Sprintf(`[%d]`, i), CallOptions{})
			if o := <-out; o.err != nil || string(o.res) != fmt.Sprintf(`[%d]`, i) {
				t.Errorf("call %d: %s %v", i, o.res, o.err)
			}
		})
	}
	wg.Wait()
	if st := b.Stats(); st.InFlight != 0 || st.Pending != 0 || st.Latency.Count != 201 {
		t.Fatalf("stats %+v", st)
	}
}

func TestGoDeadlineCancelAndLateReply(t *testing.T) {
	got := make(chan *bridgetest.Request, 10)
	srv := bridgetest.NewServer(t, bridgetest.Forward(got))
	b := startBridge(t, srv.URL(), Options{})
	warm, _ := goCall(b, "hold", `[]`, CallOptions{Timeout: 10 * time.Millisecond}) // opens the connection
	wantCode(t, (<-warm).err, CodeDeadlineExceeded)
	<-got
	start := time.Now()
	out, _ := goCall(b, "hold", `[]`, CallOptions{Timeout: 50 * time.Millisecond})
	wantCode(t, (<-out).err, CodeDeadlineExceeded)
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Fatalf("deadline after %v", el)
	}
	r := <-got
	out, cancel := goCall(b, "hold", `[]`, CallOptions{})
	<-got
	cancel()
	wantCode(t, (<-out).err, CodeCanceled)
	if st := b.Stats(); st.InFlight != 0 || st.Pending != 0 {
		t.Fatalf("after: %+v", st)
	}
	if err := nextConn(t, srv).Reply(ctxT(t), r.ID, "late"); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "the late reply", func() bool { return b.Stats().Late == 1 })
	cancel() // again: no effect
}

func TestGoLossAndResend(t *testing.T) {
	got := make(chan *bridgetest.Request, 100)
	srv := bridgetest.NewServer(t, bridgetest.Forward(got))
	b := startBridge(t, srv.URL(), Options{Backoff: quickRedial})
	out, _ := goCall(b, "hold", `[]`, CallOptions{})
	<-got
	nextConn(t, srv).Kill()
	wantCode(t, (<-out).err, CodeReplyLost)

	// Refused at once: over the limit, or while draining.
	b2 := startBridge(t, srv.URL(), Options{MaxInFlight: 1})
	one, cancelOne := goCall(b2, "hold", `[]`, CallOptions{})
	two, _ := goCall(b2, "hold", `[]`, CallOptions{})
	wantCode(t, (<-two).err, CodeOverloaded)
	cancelOne()
	wantCode(t, (<-one).err, CodeCanceled)
	b2.BeginDrain()
	three, _ := goCall(b2, "hold", `[]`, CallOptions{})
	wantCode(t, (<-three).err, CodeDraining)
}

func TestGoCallsEndWhenTheBridgeCloses(t *testing.T) {
	got := make(chan *bridgetest.Request, 10)
	srv := bridgetest.NewServer(t, bridgetest.Forward(got))
	b, err := New(Options{URL: srv.URL()})
	if err != nil {
		t.Fatal(err)
	}
	warm, _ := goCall(b, "hold", `[]`, CallOptions{Timeout: 10 * time.Millisecond})
	<-warm
	out, _ := goCall(b, "hold", `[]`, CallOptions{})
	<-got
	<-got
	b.Close()
	// Its request was written: the backend may have run it, so it is a
	// lost reply, not a call that never started.
	wantCode(t, (<-out).err, CodeReplyLost)
}

func TestConsumerGoRoutesSubscriptions(t *testing.T) {
	sb := &subBackend{}
	srv := bridgetest.NewServer(t, sb.handler)
	b := startBridge(t, srv.URL(), Options{})
	r := newRecorder(b)
	defer r.Close()
	done := make(chan string, 1)
	r.Go("x_subscribe", json.RawMessage(`["eager"]`), CallOptions{}, func(res json.RawMessage, release func(), err error) {
		done <- string(res)
		release()
	})
	if id := <-done; id != `"0x1"` {
		t.Fatalf("subscribe: %s", id)
	}
	if n := r.next(t); !strings.Contains(n.params, "first") {
		t.Fatalf("got %v", n)
	}
	_ = context.Background
}

// With Batch, requests queued together reach the backend as JSON-RPC
// batches, and every caller still gets its own reply.
func TestBatchCoalescing(t *testing.T) {
	var mu sync.Mutex
	batches, maxSize := 0, 0
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			raw, err := c.ReadRaw(ctx)
			if err != nil {
				return
			}
			var reqs []struct {
				ID     json.RawMessage `json:"id"`
				Params json.RawMessage `json:"params"`
			}
			if raw[0] != '[' {
				var one struct {
					ID     json.RawMessage `json:"id"`
					Params json.RawMessage `json:"params"`
				}
				_ = json.Unmarshal(raw, &one)
				_ = c.Reply(ctx, one.ID, one.Params)
				continue
			}
			_ = json.Unmarshal(raw, &reqs)
			mu.Lock()
			batches++
			maxSize = max(maxSize, len(reqs))
			mu.Unlock()
			var parts []string
			for _, r := range reqs {
				parts = append(parts, `{"jsonrpc":"2.0","id":`+string(r.ID)+`,"result":`+string(r.Params)+`}`)
			}
			_ = c.WriteRaw(ctx, "["+strings.Join(parts, ",")+"]")
		}
	})
	b := startBridge(t, srv.URL(), Options{Batch: true})
	if _, err := b.Call(ctxT(t), "echo", json.RawMessage(`[0]`), CallOptions{}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 500 {
		wg.Go(func() {
			out, _ := goCall(b, "echo", fmt.Sprintf(`[%d]`, i), CallOptions{})
			if o := <-out; o.err != nil || string(o.res) != fmt.Sprintf(`[%d]`, i) {
				t.Errorf("call %d: %s %v", i, o.res, o.err)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if batches == 0 || maxSize < 2 {
		t.Fatalf("%d batches, largest %d: the calls were not coalesced", batches, maxSize)
	}
	t.Logf("%d batches, largest %d", batches, maxSize)
}
