package interop

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/wsbridge/wsbridge/bridge"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/gatewaytest"
	"github.com/wsbridge/wsbridge/server"
)

// calc is a go-ethereum RPC service: calc_add, calc_echo, calc_fail and
// the subscription calc_subscribe ["ticks", every_ms].
type calc struct{}

func (calc) Add(a, b int) int  { return a + b }
func (calc) Echo(v any) any    { return v }
func (calc) Fail() error       { return failure{} }
func (calc) Sleep(ms int) bool { time.Sleep(time.Duration(ms) * time.Millisecond); return true }

type failure struct{}

func (failure) Error() string          { return "calc failed on purpose" }
func (failure) ErrorCode() int         { return -32042 }
func (failure) ErrorData() interface{} { return map[string]int{"answer": 42} }

func (calc) Ticks(ctx context.Context, everyMS int) (*rpc.Subscription, error) {
	notifier, ok := rpc.NotifierFromContext(ctx)
	if !ok {
		return nil, rpc.ErrNotificationsUnsupported
	}
	sub := notifier.CreateSubscription()
	go func() {
		t := time.NewTicker(time.Duration(everyMS) * time.Millisecond)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-t.C:
				if notifier.Notify(sub.ID, n) != nil {
					return
				}
			case <-sub.Err():
				return
			}
		}
	}()
	return sub, nil
}

// gethBackend serves calc with go-ethereum over WebSocket on loopback.
func gethBackend(t *testing.T) string {
	t.Helper()
	srv := rpc.NewServer()
	if err := srv.RegisterName("calc", calc{}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.WebsocketHandler([]string{"*"})}
	go hs.Serve(ln)
	t.Cleanup(func() {
		hs.Close()
		srv.Stop()
	})
	return "ws://" + ln.Addr().String()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// go-ethereum's client talks to /ws and /rpc, which forward to a
// go-ethereum server: calls, batches, errors with code and data.
func TestGethClientThroughGatewayToGethServer(t *testing.T) {
	gw := gatewaytest.Start(t, server.Options{Bridge: bridge.Options{URL: gethBackend(t)}})
	for _, endpoint := range []string{"ws://" + gw.HTTPAddr().String() + "/ws", "http://" + gw.HTTPAddr().String() + "/rpc"} {
		t.Run(endpoint, func(t *testing.T) {
			client, err := rpc.DialContext(ctxT(t), endpoint)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			var sum int
			if err := client.CallContext(ctxT(t), &sum, "calc_add", 40, 2); err != nil || sum != 42 {
				t.Fatalf("calc_add: %d %v", sum, err)
			}
			var echoed map[string]any
			if err := client.CallContext(ctxT(t), &echoed, "calc_echo", map[string]any{"k": []int{1, 2}}); err != nil || len(echoed["k"].([]any)) != 2 {
				t.Fatalf("calc_echo: %v %v", echoed, err)
			}
			err = client.CallContext(ctxT(t), nil, "calc_fail")
			var rpcErr rpc.Error
			var dataErr rpc.DataError
			if !errors.As(err, &rpcErr) || rpcErr.ErrorCode() != -32042 || !errors.As(err, &dataErr) {
				t.Fatalf("calc_fail: %v", err)
			}
			if data, _ := dataErr.ErrorData().(map[string]any); data["answer"] != 42.0 {
				t.Fatalf("error data %v", dataErr.ErrorData())
			}
			batch := []rpc.BatchElem{
				{Method: "calc_add", Args: []any{1, 2}, Result: new(int)},
				{Method: "calc_sleep", Args: []any{50}, Result: new(bool)},
				{Method: "calc_nope", Result: new(int)},
			}
			if err := client.BatchCallContext(ctxT(t), batch); err != nil {
				t.Fatal(err)
			}
			if *batch[0].Result.(*int) != 3 || !*batch[1].Result.(*bool) || batch[2].Error == nil {
				t.Fatalf("batch: %v %v %v", *batch[0].Result.(*int), *batch[1].Result.(*bool), batch[2].Error)
			}
		})
	}
}

// go-ethereum's client subscribes through /ws to go-ethereum's server
// subscriptions: each client gets its own notifications, identical
// subscriptions share one backend subscription, and unsubscribing works.
func TestGethSubscriptionsThroughGateway(t *testing.T) {
	gw := gatewaytest.Start(t, server.Options{Bridge: bridge.Options{URL: gethBackend(t)}})
	endpoint := "ws://" + gw.HTTPAddr().String() + "/ws"
	dial := func() *rpc.Client {
		c, err := rpc.DialWebsocket(ctxT(t), endpoint, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	a, b, shared := dial(), dial(), dial()
	chA, chB, chShared := make(chan int, 100), make(chan int, 100), make(chan int, 100)
	subA, err := a.Subscribe(ctxT(t), "calc", chA, "ticks", 10)
	if err != nil {
		t.Fatal(err)
	}
	subB, err := b.Subscribe(ctxT(t), "calc", chB, "ticks", 15)
	if err != nil {
		t.Fatal(err)
	}
	subShared, err := shared.Subscribe(ctxT(t), "calc", chShared, "ticks", 10) // same as a's
	if err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]chan int{"a": chA, "b": chB, "shared": chShared} {
		for range 3 {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s received no notification", name)
			}
		}
	}
	st := gw.Bridge().Stats()
	if st.Subscriptions != 2 {
		t.Fatalf("%d backend subscriptions, want 2 (a and shared share one)", st.Subscriptions)
	}
	subA.Unsubscribe()
	subShared.Unsubscribe()
	subB.Unsubscribe()
	deadline := time.Now().Add(10 * time.Second)
	for gw.Bridge().Stats().Subscriptions != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("subscriptions left: %d", gw.Bridge().Stats().Subscriptions)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gRPC clients reach the go-ethereum backend through the bridge.
func TestGRPCToGethServer(t *testing.T) {
	gw := gatewaytest.Start(t, server.Options{Bridge: bridge.Options{URL: gethBackend(t)}})
	conn, err := grpc.NewClient(gw.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	params, _ := structpb.NewValue([]any{20, 22})
	res, err := wsbridgev1.NewBridgeServiceClient(conn).Call(ctxT(t), &wsbridgev1.CallRequest{Method: "calc_add", Params: params})
	if err != nil || res.Result.GetNumberValue() != 42 {
		t.Fatalf("%v %v", res, err)
	}
}
