package bridge

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// replyOfSize is a reply to id whose frame is exactly size bytes: a
// string result of x's.
func replyOfSize(id json.RawMessage, size int) string {
	head := `{"jsonrpc":"2.0","id":` + string(id) + `,"result":"`
	return head + strings.Repeat("x", size-len(head)-2) + `"}`
}

// Issue 20 item 5: a reply over the reply limit, in the middle of 64
// concurrent calls, fails its own call with CodeTooLarge and no other;
// the connection stays up (no redial, no transport error for the
// breaker). A reply exactly at the limit passes, one a byte over fails; a
// notification over it is dropped and counted.
func TestOversizeReplyFailsOnlyItsCall(t *testing.T) {
	const limit = 64 << 10
	const callers = 64
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		var held []*bridgetest.Request
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			switch r.Method {
			case "exact":
				err = c.WriteRaw(ctx, replyOfSize(r.ID, limit))
			case "overByOne":
				err = c.WriteRaw(ctx, replyOfSize(r.ID, limit+1))
			case "afterNotification":
				if err = c.WriteRaw(ctx, `{"jsonrpc":"2.0","method":"tick","params":["`+strings.Repeat("n", limit)+`"]}`); err == nil {
					err = c.Reply(ctx, r.ID, "ok")
				}
			default:
				// Hold every call until all are in, then answer them with
				// the big reply in the middle.
				held = append(held, r)
				if len(held) < callers {
					continue
				}
				var big *bridgetest.Request
				var others []*bridgetest.Request
				for _, h := range held {
					if h.Method == "big" {
						big = h
					} else {
						others = append(others, h)
					}
				}
				held = nil
				for i, h := range others {
					if i == len(others)/2 {
						// Far over the limit: 16 times it.
						if err = c.WriteRaw(ctx, replyOfSize(big.ID, 16*limit)); err != nil {
							return
						}
					}
					if err = c.Reply(ctx, h.ID, h.Params); err != nil {
						return
					}
				}
			}
			if err != nil {
				return
			}
		}
	})
	b := startBridge(t, srv.URL(), Options{MaxReplyBytes: limit})

	var wg sync.WaitGroup
	errs := make([]error, callers)
	results := make([]json.RawMessage, callers)
	for i := range callers {
		method, params := "echo", json.RawMessage(`["caller `+strconv.Itoa(i)+`"]`)
		if i == callers/2 {
			method = "big"
		}
		wg.Go(func() { results[i], errs[i] = b.Call(ctxT(t), method, params, CallOptions{}) })
	}
	wg.Wait()
	for i, err := range errs {
		if i == callers/2 {
			e := wantCode(t, err, CodeTooLarge)
			if want := fmt.Sprintf("reply was larger than the %d-byte reply limit (%d bytes)", limit, 16*limit); !strings.Contains(e.Message, want) {
				t.Errorf("oversize reply: message %q, want it to say %q", e.Message, want)
			}
			continue
		}
		if want := `["caller ` + strconv.Itoa(i) + `"]`; err != nil || string(results[i]) != want {
			t.Errorf("caller %d: %s, %v; want its own reply %s", i, results[i], err, want)
		}
	}

	res, err := b.Call(ctxT(t), "exact", nil, CallOptions{})
	if err != nil || len(res) < limit-64 || !strings.HasPrefix(string(res), `"xxx`) {
		t.Fatalf("a reply exactly at the limit: %d bytes of result, %v", len(res), err)
	}
	_, err = b.Call(ctxT(t), "overByOne", nil, CallOptions{})
	wantCode(t, err, CodeTooLarge)
	if res, err := b.Call(ctxT(t), "afterNotification", nil, CallOptions{}); err != nil || string(res) != `"ok"` {
		t.Fatalf("a call after an oversize notification: %s, %v", res, err)
	}

	st := b.Stats()
	if st.Connects != 1 || st.Reconnects != 0 || st.Backends[0].TransportErrors != 0 || st.Backends[0].Breaker != BreakerClosed {
		t.Errorf("connects %d, reconnects %d, transport errors %d, breaker %v; want one connection that stayed up",
			st.Connects, st.Reconnects, st.Backends[0].TransportErrors, st.Backends[0].Breaker)
	}
	if st.OversizeReplies != 3 || st.Malformed != 0 || st.Notifications != 0 {
		t.Errorf("oversize %d, malformed %d, notifications %d; want 3, 0, 0", st.OversizeReplies, st.Malformed, st.Notifications)
	}
}

// With Options.Batch, a batch's replies come in one message: one over the
// reply limit fails every call of that batch at once, as too large,
// instead of failing those named before the cut and leaving the others to
// their deadlines (found by the attack review).
func TestOversizeBatchReplyFailsItsWholeBatch(t *testing.T) {
	var batches atomic.Int64
	srv := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			frame, err := c.ReadRaw(ctx)
			if err != nil {
				return
			}
			var reqs []struct{ ID json.RawMessage }
			if json.Unmarshal(frame, &reqs) != nil {
				var one struct{ ID json.RawMessage }
				_ = json.Unmarshal(frame, &one)
				reqs = append(reqs, one)
			} else {
				batches.Add(1)
			}
			// Each reply is 1 KiB: a batch of more than 4 is over the limit.
			var out []string
			for _, r := range reqs {
				out = append(out, `{"jsonrpc":"2.0","id":`+string(r.ID)+`,"result":"`+strings.Repeat("x", 1024)+`"}`)
			}
			msg := out[0]
			if len(out) > 1 || frame[0] == '[' {
				msg = "[" + strings.Join(out, ",") + "]"
			}
			if c.WriteRaw(ctx, msg) != nil {
				return
			}
		}
	})
	b := startBridge(t, srv.URL(), Options{Batch: true, MaxReplyBytes: 4 << 10})
	if _, err := b.Call(ctxT(t), "big", nil, CallOptions{}); err != nil { // the connection is open
		t.Fatal(err)
	}
	// Calls that meet at the writer go out as batches; a batch of more
	// than four is answered by one message over the limit.
	const calls = 500
	out := make(chan goOutcome, calls)
	for range calls {
		go func() {
			res, err := b.Call(ctxT(t), "big", nil, CallOptions{Timeout: time.Minute})
			out <- goOutcome{res, err}
		}()
	}
	tooLarge := 0
	for range calls {
		select {
		case o := <-out:
			switch CodeOf(o.err) {
			case 0:
			case CodeTooLarge:
				tooLarge++
			default:
				t.Fatalf("a call ended with %v", o.err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a call of an oversize batch waits for its deadline")
		}
	}
	if batches.Load() == 0 || tooLarge == 0 {
		t.Fatalf("%d batches, %d calls too large: the test made no oversize batch", batches.Load(), tooLarge)
	}
	if st := b.Stats(); st.Connects != 1 || st.InFlight != 0 {
		t.Fatalf("stats %+v", st)
	}
}
