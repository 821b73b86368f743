package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// shuffling echoes every request after a random 0-50 ms (scenario 12), so replies come
// back in a different order than the requests went out.
func shuffling(ctx context.Context, c *bridgetest.Conn) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		r, err := c.Read(ctx)
		if err != nil {
			return
		}
		if r.ID == nil {
			continue
		}
		wg.Go(func() {
			t := time.NewTimer(time.Duration(rand.IntN(50000)) * time.Microsecond)
			defer t.Stop()
			select {
			case <-t.C:
				_ = c.Reply(ctx, r.ID, r.Params)
			case <-ctx.Done():
			}
		})
	}
}

// 200 clients over /ws, /rpc, REST and gRPC at once make 50,000 calls
// through the one backend socket while the backend shuffles its replies.
// Every reply must carry its caller's nonce; nothing may hang; afterwards
// the pending table is empty and the goroutines are back to baseline.
func TestManyClientsAllFacesNoMisdelivery(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	fb := bridgetest.NewServer(t, shuffling)
	h := start(t, fb.URL(), nil)
	// The baseline is the steady state: backend link and gRPC client up.
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo"}); err != nil {
		t.Fatal(err)
	}
	baseline := runtime.NumGoroutine()

	const clientsPerFace = 50
	const callsPerClient = 250 // 4 faces x 50 clients x 250 = 50,000
	var calls, wrong, failed atomic.Int64
	check := func(nonce, got string) {
		calls.Add(1)
		if !strings.Contains(got, `"`+nonce+`"`) {
			if wrong.Add(1) < 5 {
				t.Errorf("call %s got %s", nonce, got)
			}
		}
	}
	fail := func(err error) {
		if failed.Add(1) < 5 {
			t.Errorf("call failed: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var wg sync.WaitGroup

	// /ws: pipelined, 8 in flight per client, every client using the same ids.
	for i := range clientsPerFace {
		wg.Go(func() {
			conn, _, err := websocket.Dial(ctx, strings.Replace(h.base, "http://", "ws://", 1)+"/ws", nil)
			if err != nil {
				fail(err)
				return
			}
			defer conn.CloseNow()
			sem := make(chan struct{}, 8)
			want := sync.Map{}
			readDone := make(chan struct{})
			go func() {
				defer close(readDone)
				for range callsPerClient {
					_, b, err := conn.Read(ctx)
					if err != nil {
						fail(err)
						return
					}
					var r struct {
						ID     int             `json:"id"`
						Result json.RawMessage `json:"result"`
					}
					_ = json.Unmarshal(b, &r)
					nonce, _ := want.LoadAndDelete(r.ID)
					s, _ := nonce.(string)
					check(s, string(b))
					<-sem
				}
			}()
			for j := range callsPerClient {
				sem <- struct{}{}
				nonce := fmt.Sprintf("ws-%d-%d", i, j)
				want.Store(j, nonce)
				if err := conn.Write(ctx, websocket.MessageText, fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"echo","params":[%q]}`, j, nonce)); err != nil {
					fail(err)
					return
				}
			}
			<-readDone
		})
	}
	// /rpc and REST: sequential calls per client.
	for i := range clientsPerFace {
		wg.Go(func() {
			for j := range callsPerClient {
				nonce := fmt.Sprintf("rpc-%d-%d", i, j)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/rpc",
					strings.NewReader(fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"echo","params":[%q]}`, nonce)))
				req.Header.Set("Content-Type", "application/json")
				got, err := doBody(req)
				if err != nil {
					fail(err)
					return
				}
				check(nonce, got)
			}
		})
		wg.Go(func() {
			for j := range callsPerClient {
				nonce := fmt.Sprintf("rest-%d-%d", i, j)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/v1/call/echo", strings.NewReader(fmt.Sprintf(`[%q]`, nonce)))
				req.Header.Set("Content-Type", "application/json")
				got, err := doBody(req)
				if err != nil {
					fail(err)
					return
				}
				check(nonce, got)
			}
		})
	}
	// gRPC.
	for i := range clientsPerFace {
		wg.Go(func() {
			for j := range callsPerClient {
				nonce := fmt.Sprintf("grpc-%d-%d", i, j)
				res, err := h.bridge.Call(ctx, &wsbridgev1.CallRequest{Method: "echo", Params: value(t, fmt.Sprintf(`[%q]`, nonce))})
				if err != nil {
					fail(err)
					return
				}
				check(nonce, jsonOf(t, res.Result))
			}
		})
	}
	wg.Wait()
	if n := calls.Load(); n != 4*clientsPerFace*callsPerClient || wrong.Load() != 0 || failed.Load() != 0 {
		t.Fatalf("%d calls answered, %d to the wrong caller, %d failed", n, wrong.Load(), failed.Load())
	}
	st := h.srv.Bridge().Stats()
	if st.Pending != 0 || st.InFlight != 0 || st.Unknown != 0 || st.Malformed != 0 || st.Connects != 1 || st.Late != 0 {
		t.Fatalf("after the load: %+v", st)
	}
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseline+5 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines, baseline %d:\n%s", runtime.NumGoroutine(), baseline, summarizeStacks(string(buf[:n])))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func doBody(req *http.Request) (string, error) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return string(b), nil
}

// summarizeStacks counts goroutines by their top user frame.
func summarizeStacks(dump string) string {
	counts := map[string]int{}
	for _, g := range strings.Split(dump, "\n\n") {
		lines := strings.Split(g, "\n")
		key := ""
		for _, l := range lines[1:] {
			if strings.Contains(l, "wsbridge") || strings.Contains(l, "net/http.") || strings.Contains(l, "grpc") {
				key = strings.TrimSpace(l)
				break
			}
		}
		counts[key]++
	}
	var b strings.Builder
	for k, n := range counts {
		fmt.Fprintf(&b, "%5d %s\n", n, k)
	}
	return b.String()
}
