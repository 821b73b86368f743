package backend

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"
)

// Demo subscriptions, in the style of Ethereum's eth_subscribe:
//
//	demo_subscribe    [intervalMs] or {"interval_ms": N} -> "0x<n>", then every
//	                  interval {"jsonrpc":"2.0","method":"demo_subscription",
//	                  "params":{"subscription":"0x<n>","result":{"seq":K}}}
//	demo_unsubscribe  ["0x<n>"] -> true, or false when no such subscription
//
// Subscriptions belong to their connection and end with it. The first
// notification is sent only after the subscribe reply.

const (
	defaultSubInterval = time.Second
	minSubInterval     = time.Millisecond
	maxSubsPerConn     = 1000
)

type ctxKey int

const (
	connKey      ctxKey = iota // *conn serving the call
	afterSendKey               // *afterSend: work to start once the reply is queued
)

// afterSend collects work that must wait until the frame's reply is queued.
type afterSend struct {
	mu  sync.Mutex
	fns []func()
}

func (a *afterSend) add(f func()) {
	a.mu.Lock()
	a.fns = append(a.fns, f)
	a.mu.Unlock()
}

func (a *afterSend) run() {
	a.mu.Lock()
	fns := a.fns
	a.fns = nil
	a.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

// subscriptions are a connection's demo subscriptions; the goroutines are
// counted in wg and end with the connection's context or on unsubscribe.
type subscriptions struct {
	mu   sync.Mutex
	next uint64
	live map[string]context.CancelFunc
	wg   sync.WaitGroup
}

func (s *Server) subscribe(ctx context.Context, params json.RawMessage) (json.RawMessage, error) {
	c, _ := ctx.Value(connKey).(*conn)
	after, _ := ctx.Value(afterSendKey).(*afterSend)
	if c == nil || after == nil {
		return nil, errInvalidRequest("subscriptions need a WebSocket connection")
	}
	interval := defaultSubInterval
	var arr []float64
	var obj struct {
		IntervalMS *float64 `json:"interval_ms"`
	}
	switch {
	case len(params) == 0:
	case json.Unmarshal(params, &arr) == nil:
		if len(arr) > 0 {
			interval = time.Duration(arr[0] * float64(time.Millisecond))
		}
	case json.Unmarshal(params, &obj) == nil:
		if obj.IntervalMS != nil {
			interval = time.Duration(*obj.IntervalMS * float64(time.Millisecond))
		}
	default:
		return nil, errInvalidParams("demo_subscribe takes [intervalMs] or {\"interval_ms\": N}")
	}
	if interval < minSubInterval {
		return nil, errInvalidParams("interval must be at least 1 ms")
	}

	subs := &c.subs
	subs.mu.Lock()
	if len(subs.live) >= maxSubsPerConn {
		subs.mu.Unlock()
		return nil, newError(-32000, "too many subscriptions", "")
	}
	subs.next++
	id := "0x" + strconv.FormatUint(subs.next, 16)
	sctx, cancel := context.WithCancel(c.ctx)
	if subs.live == nil {
		subs.live = map[string]context.CancelFunc{}
	}
	subs.live[id] = cancel
	subs.wg.Add(1)
	subs.mu.Unlock()

	start := make(chan struct{})
	after.add(func() { close(start) })
	go func() {
		defer subs.wg.Done()
		defer cancel()
		select {
		case <-start:
		case <-sctx.Done():
			return
		}
		t := time.NewTicker(interval)
		defer t.Stop()
		for seq := uint64(1); ; seq++ {
			select {
			case <-t.C:
				c.send(subscriptionMessage(id, seq))
			case <-sctx.Done():
				return
			}
		}
	}()
	return jsonString(id), nil
}

func (s *Server) unsubscribe(ctx context.Context, params json.RawMessage) (json.RawMessage, error) {
	c, _ := ctx.Value(connKey).(*conn)
	var ids []string
	if c == nil || json.Unmarshal(params, &ids) != nil || len(ids) != 1 {
		return nil, errInvalidParams("demo_unsubscribe takes [subscriptionId]")
	}
	c.subs.mu.Lock()
	cancel, ok := c.subs.live[ids[0]]
	delete(c.subs.live, ids[0])
	c.subs.mu.Unlock()
	if ok {
		cancel()
		return json.RawMessage("true"), nil
	}
	return json.RawMessage("false"), nil
}

func subscriptionMessage(id string, seq uint64) []byte {
	b := []byte(`{"jsonrpc":"2.0","method":"demo_subscription","params":{"subscription":"`)
	b = append(b, id...)
	b = append(b, `","result":{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	return append(b, `}}}`...)
}
