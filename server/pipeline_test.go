package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/auth"
	"github.com/wsbridge/wsbridge/typed"
)

// Regression tests of the one notification stream and the one
// observation (issue 18): each failed before they were one.

// ticker is a backend whose demo_subscribe makes a subscription "0x1"
// that sends {"seq": n} every 5 ms, counting from 1 on each connection.
func ticker(ctx context.Context, c *bridgetest.Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		r, err := c.Read(ctx)
		if err != nil {
			return
		}
		switch r.Method {
		case "demo_subscribe":
			_ = c.Reply(ctx, r.ID, "0x1")
			wg.Go(func() {
				t := time.NewTicker(5 * time.Millisecond)
				defer t.Stop()
				for seq := 1; ; seq++ {
					select {
					case <-t.C:
					case <-ctx.Done():
						return
					}
					if c.WriteRaw(ctx, fmt.Sprintf(`{"jsonrpc":"2.0","method":"demo_subscription","params":{"subscription":"0x1","result":{"seq":%d}}}`, seq)) != nil {
						return
					}
				}
			})
		default:
			_ = c.Reply(ctx, r.ID, true)
		}
	}
}

// openTicks opens demo.v1.Demo/Ticks on conn and returns a function that
// reads the next tick's seq (or the stream's error).
func openTicks(t *testing.T, ctx context.Context, conn *grpc.ClientConn, api *typed.API) func() (int64, error) {
	t.Helper()
	d, _ := api.Files.FindDescriptorByName("demo.v1.Demo.Ticks")
	md := d.(protoreflect.MethodDescriptor)
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/demo.v1.Demo/Ticks")
	if err != nil {
		t.Fatal(err)
	}
	req := dynamicpb.NewMessage(md.Input())
	_ = protojson.Unmarshal([]byte(`{"intervalMs":5}`), req)
	if err := stream.SendMsg(req); err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	return func() (int64, error) {
		tick := dynamicpb.NewMessage(md.Output())
		if err := stream.RecvMsg(tick); err != nil {
			return 0, err
		}
		return tick.Get(md.Output().Fields().ByName("seq")).Int(), nil
	}
}

// A typed server stream cannot carry wsbridge_gap: when its subscription
// is re-made after a backend loss (--resubscribe), it ends with
// UNAVAILABLE and an ErrorInfo of reason GAP instead of going on from a
// new seq as if nothing had happened.
func TestTypedStreamEndsAtAGap(t *testing.T) {
	srv := bridgetest.NewServer(t, ticker)
	h, api := typedHarnessAt(t, srv.URL(), func(o *Options) {
		o.Bridge.Backoff = bridge.Backoff{Base: 10 * time.Millisecond, Max: 20 * time.Millisecond}
		o.Bridge.Resubscribe = true
	})
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	next := openTicks(t, ctx, h.conn, api)
	if seq, err := next(); err != nil || seq != 1 {
		t.Fatalf("first tick: %d %v", seq, err)
	}
	srv.Stop()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	for {
		seq, err := next()
		if err == nil {
			if seq == 1 {
				t.Fatal("the stream went on from seq 1 after the backend came back")
			}
			continue // a tick from before the loss
		}
		st := status.Convert(err)
		if st.Code() != codes.Unavailable {
			t.Fatalf("the stream ended with %v, want UNAVAILABLE", err)
		}
		var reason string
		for _, d := range st.Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				reason = info.Reason
			}
		}
		if reason != "GAP" {
			t.Fatalf("the stream ended with %v, reason %q; want reason GAP", err, reason)
		}
		break
	}
	bridgetest.Eventually(t, "the subscription released", func() bool { return h.srv.Bridge().Stats().ClientSubscriptions == 0 })
}

// A typed REST or Connect request whose body does not fit its message is
// the client's error: 400 (INVALID_ARGUMENT) naming the field, not 500.
func TestTypedRequestThatDoesNotFitIs400(t *testing.T) {
	h, _ := typedHarness(t)
	rest := http.Header{"Content-Type": {"application/json"}}
	connect := http.Header{"Content-Type": {"application/json"}, "Connect-Protocol-Version": {"1"}}
	for _, tc := range []struct {
		path, body string
		header     http.Header
		want       string
	}{
		{"/v1/demo/add", `{"a":2.5}`, rest, "field a"},
		{"/v1/demo/add", `{"a":"x"}`, rest, "field a"},
		{"/v1/demo/add", `{"a":2`, rest, "AddRequest"},
		{"/demo.v1.Demo/Add", `{"a":2.5}`, connect, "field a"},
		{"/demo.v1.Demo/Add", `{"b":"x"}`, connect, "field b"},
		{"/demo.v1.Demo/Add", `{"a":2`, connect, "AddRequest"},
	} {
		code, body := httpDo(t, http.MethodPost, h.base+tc.path, tc.body, tc.header)
		if code != http.StatusBadRequest || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s: %d %s; want 400 naming %q", tc.path, tc.body, code, body, tc.want)
		}
	}
}

// Revoking a token ends the event streams opened with it, as it ends every
// other stream.
func TestSSEStreamsEndWhenTheTokenIsRevoked(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("alpha\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tf, err := auth.Load(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := start(t, demoBackendWith(t, 10*time.Millisecond), func(o *Options) { o.Auth = tf; o.RevocationCheck = 20 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a stream still open then was not ended
	defer cancel()
	bearer := http.Header{"Authorization": {"Bearer alpha"}}
	notes, _ := readSSE(t, ctx, h.base+"/v1/subscribe?methods=tick", bearer)
	stats, _ := readSSE(t, ctx, h.base+"/v1/stats:watch?interval=100ms", bearer)
	if ev := next(t, notes); ev.event != "notification" {
		t.Fatalf("first on /v1/subscribe: %+v", ev)
	}
	if ev := next(t, stats); ev.event != "stats" {
		t.Fatalf("first on /v1/stats:watch: %+v", ev)
	}
	rewrite(t, file, "# none\n")
	for name, events := range map[string]<-chan sseEvent{"/v1/subscribe": notes, "/v1/stats:watch": stats} {
		var end *sseEvent
		for ev := range events { // until the stream ends (or the test's context does)
			if ev.event == "error" {
				end = &ev
			} else if end != nil {
				t.Errorf("%s went on after its error event: %+v", name, ev)
			}
		}
		if end == nil || !strings.Contains(end.data, `"code":16`) {
			t.Errorf("%s after the revocation: end %+v, want an error event with UNAUTHENTICATED (16)", name, end)
		}
	}
}

// The subscription budget is the client connection's, whatever streams it
// opens: typed server streams and Sessions on one gRPC connection share
// it, and a second connection has its own.
func TestStreamsShareTheClientsSubscriptionBudget(t *testing.T) {
	srv := bridgetest.NewServer(t, ticker)
	h, api := typedHarnessAt(t, srv.URL(), func(o *Options) { o.Bridge.MaxSubscriptionsPerConsumer = 4 })
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	for i := range 4 {
		if _, err := openTicks(t, ctx, h.conn, api)(); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	if _, err := openTicks(t, ctx, h.conn, api)(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a fifth stream on the connection: %v, want RESOURCE_EXHAUSTED", err)
	}
	session, err := h.bridge.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := session.Send(&wsbridgev1.SessionRequest{Id: "1", Method: "demo_subscribe", Params: value(t, `[5]`)}); err != nil {
		t.Fatal(err)
	}
	resp, err := session.Recv()
	if err != nil || resp.GetReply().GetError().GetCode() != int32(codes.ResourceExhausted) {
		t.Fatalf("a Session's subscribe on the same connection: %v %v, want RESOURCE_EXHAUSTED", resp, err)
	}
	// Another connection has a budget of its own.
	other, err := grpc.NewClient(h.srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := openTicks(t, ctx, other, api)(); err != nil {
		t.Fatalf("a stream on another connection: %v", err)
	}
}

// A session that closes cancels a call started between its claim and the
// recording of its cancel (which cancelAll could not see): close does not
// wait for it until the call's deadline.
func TestSessionCloseCancelsACallItHadNotSeen(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	ss := h.srv.newSession(context.Background(), faceSession, discardOut{}, false)
	ss.hold()
	if err := ss.claim("k", 0); err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	go func() {
		ss.close()
		close(closed)
	}()
	bridgetest.Eventually(t, "close to cancel what it sees", func() bool {
		ss.mu.Lock()
		defer ss.mu.Unlock()
		return ss.closed && ss.cancelling
	})
	cancelled := make(chan struct{})
	ss.setCancel("k", func() {
		close(cancelled)
		ss.unclaim("k", 0)
		ss.answered()
	})
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the call's cancel was never called")
	}
	<-closed
}

type discardOut struct{}

func (discardOut) reply(bool, []reply) bool            { return true }
func (discardOut) notify(string, json.RawMessage) bool { return true }
func (discardOut) leave()                              {}
func (discardOut) endSlow(string)                      {}
