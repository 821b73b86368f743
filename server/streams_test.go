package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// ticking is a fake backend that echoes calls and sends a tick
// notification every 5 ms.
func ticking(ctx context.Context, c *bridgetest.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if c.WriteRaw(ctx, `{"jsonrpc":"2.0","method":"tick","params":{"n":1}}`) != nil {
					return
				}
				_ = c.WriteRaw(ctx, `{"jsonrpc":"2.0","method":"other","params":[]}`)
			case <-ctx.Done():
				return
			}
		}
	}()
	bridgetest.Echo(ctx, c)
	<-done
}

func TestSubscribeStreamsByMethodAndEndsOnLoss(t *testing.T) {
	fb := bridgetest.NewServer(t, ticking)
	h := start(t, fb.URL(), nil)
	stream, err := h.bridge.Subscribe(ctxT(t), &wsbridgev1.SubscribeRequest{Methods: []string{"tick"}})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		n, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if n.Method != "tick" || n.Params.GetStructValue().GetFields()["n"].GetNumberValue() != 1 {
			t.Fatalf("got %v", n)
		}
	}
	fb.Stop()
	for {
		_, err := stream.Recv()
		if err == nil {
			continue // ticks already queued
		}
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("end of stream: %v, want UNAVAILABLE", err)
		}
		break
	}
}

func TestSubscribeOverREST(t *testing.T) {
	fb := bridgetest.NewServer(t, ticking)
	h := start(t, fb.URL(), nil)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.base+"/v1/subscribe?methods=tick", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("HTTP %d: %s", resp.StatusCode, b)
	}
	sc := bufio.NewScanner(resp.Body)
	for range 2 {
		if !sc.Scan() {
			t.Fatalf("stream ended: %v", sc.Err())
		}
		var line struct {
			Result struct {
				Method string          `json:"method"`
				Params json.RawMessage `json:"params"`
			} `json:"result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil || line.Result.Method != "tick" {
			t.Fatalf("line %s: %v", sc.Bytes(), err)
		}
	}
}

func TestSession(t *testing.T) {
	h := start(t, demoBackendWith(t, 10*time.Millisecond), nil)
	stream, err := h.bridge.Session(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	send := func(r *wsbridgev1.SessionRequest) {
		t.Helper()
		if err := stream.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	send(&wsbridgev1.SessionRequest{Id: "slow", Method: "sleep", Params: value(t, `[300]`)})
	send(&wsbridgev1.SessionRequest{Id: "slow", Method: "echo"})
	send(&wsbridgev1.SessionRequest{Id: "fast", Method: "add", Params: value(t, `[1,2]`)})
	send(&wsbridgev1.SessionRequest{Id: "err", Method: "fail", Params: value(t, `{"code":-32601,"message":"nope"}`)})
	send(&wsbridgev1.SessionRequest{Id: "sub", Method: "wsbridge_subscribe", Params: value(t, `["tick"]`)})
	seen := map[string]*wsbridgev1.SessionReply{}
	var order []string
	ticks := 0
	for len(seen) < 5 || ticks < 2 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if n := resp.GetNotification(); n != nil {
			if n.Method != "tick" {
				t.Fatalf("notification %v", n)
			}
			ticks++
			continue
		}
		r := resp.GetReply()
		key := r.Id
		if _, dup := seen[key]; dup {
			key += "#2"
		}
		seen[key] = r
		order = append(order, r.Id)
	}
	if seen["fast"].GetResult().GetNumberValue() != 3 {
		t.Fatalf("fast: %v", seen["fast"])
	}
	if e := seen["err"].GetError(); e.GetCode() != int32(codes.Unimplemented) || e.GetBackend().GetCode() != -32601 {
		t.Fatalf("err: %v", seen["err"])
	}
	dupErr := seen["slow"].GetError()
	if dupErr == nil {
		dupErr = seen["slow#2"].GetError()
	}
	if dupErr.GetCode() != int32(codes.InvalidArgument) {
		t.Fatalf("duplicate id: %v / %v", seen["slow"], seen["slow#2"])
	}
	if order[len(order)-1] != "slow" {
		t.Fatalf("replies in order %v: the slow one should come last", order)
	}
	// Half-close: the session ends cleanly once its calls are answered.
	send(&wsbridgev1.SessionRequest{Id: "last", Method: "sleep", Params: value(t, `[50]`)})
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after CloseSend: %v", err)
		}
		if r := resp.GetReply(); r != nil && r.Id == "last" && r.GetResult() == nil {
			t.Fatalf("last: %v", r)
		}
	}
}

func TestSessionSubscriptionsAreRouted(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	a, err := h.bridge.Session(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Send(&wsbridgev1.SessionRequest{Id: "1", Method: "demo_subscribe", Params: value(t, `[10]`)}); err != nil {
		t.Fatal(err)
	}
	first, err := a.Recv()
	if err != nil {
		t.Fatal(err)
	}
	id := first.GetReply().GetResult().GetStringValue()
	if !strings.HasPrefix(id, "0x") {
		t.Fatalf("the subscribe reply must come first: %v", first)
	}
	for range 3 {
		resp, err := a.Recv()
		if err != nil {
			t.Fatal(err)
		}
		n := resp.GetNotification()
		if n.GetMethod() != "demo_subscription" || n.GetParams().GetStructValue().GetFields()["subscription"].GetStringValue() != id {
			t.Fatalf("got %v", resp)
		}
	}
}

func TestSubscribeSlowConsumerIsEnded(t *testing.T) {
	fb := bridgetest.NewServer(t, flood)
	h := start(t, fb.URL(), func(o *Options) { o.ClientBuffer = 4 })
	stream, err := h.bridge.Subscribe(ctxT(t), &wsbridgev1.SubscribeRequest{Methods: []string{"x_subscription"}})
	if err != nil {
		t.Fatal(err)
	}
	// Start the flood (a plain call: the notifications it sets off carry
	// a subscription id the gateway never gave out, so they fan out by
	// method) and do not read the stream.
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "x_flood"}); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "the stream to be ended as too slow", func() bool {
		st, _ := h.stats.GetStats(ctxT(t), nil)
		return st.SlowConsumers == 1
	})
	for {
		if _, err := stream.Recv(); err != nil {
			if status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("end of stream: %v", err)
			}
			return
		}
	}
}
