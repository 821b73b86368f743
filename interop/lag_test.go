package interop

import (
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/childproc"
)

// chainNode is a go-ethereum node's view of its chain: its head block,
// and a name to tell which node answered.
type chainNode struct {
	name string
	head atomic.Uint64
}

type chainEth struct{ n *chainNode }

func (e chainEth) BlockNumber() hexutil.Uint64 { return hexutil.Uint64(e.n.head.Load()) }

type chainWeb3 struct{ n *chainNode }

func (w chainWeb3) ClientVersion() string { return w.n.name }

// chainBackend serves a chainNode with go-ethereum over WebSocket.
func chainBackend(t *testing.T, n *chainNode) string {
	t.Helper()
	srv := rpc.NewServer()
	if err := srv.RegisterName("eth", chainEth{n}); err != nil {
		t.Fatal(err)
	}
	if err := srv.RegisterName("web3", chainWeb3{n}); err != nil {
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

// gatewayProcess builds wsbridge and starts `wsbridge serve args...` as a
// user would; it returns a gRPC connection to it.
func gatewayProcess(t *testing.T, args ...string) *grpc.ClientConn {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "wsbridge")
	build := exec.Command("go", "build", "-o", bin, "./cmd/wsbridge")
	build.Dir = ".." // in the main module, with its go.sum
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	p, err := childproc.Start(bin, append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	m, err := p.WaitLog(ctxT(t), "wsbridge listening")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(m["grpc"].(string), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Issue 20 item 6: two go-ethereum nodes, one 100 blocks behind. With
// --backend-max-lag the lagging one gets no calls, and is reported
// unavailable with reason lag, until it catches up.
func TestLaggingNodeGetsNoCalls(t *testing.T) {
	ahead, behind := &chainNode{name: "ahead"}, &chainNode{name: "behind"}
	ahead.head.Store(19_000_100)
	behind.head.Store(19_000_000)
	urlAhead, urlBehind := chainBackend(t, ahead), chainBackend(t, behind)
	conn := gatewayProcess(t, "--backend", urlAhead, "--backend", urlBehind, "--balance", "round-robin", "--backend-eager",
		"--backend-health-method", "eth_blockNumber", "--backend-health-interval", "50ms", "--backend-max-lag", "10")
	bridge, stats := wsbridgev1.NewBridgeServiceClient(conn), wsbridgev1.NewStatsServiceClient(conn)
	row := func(i int) *wsbridgev1.BackendStats {
		st, err := stats.GetStats(ctxT(t), &wsbridgev1.GetStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return st.GetBackends()[i]
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s: %v", what, row(1))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("the node behind reported as lagging", func() bool {
		return row(1).GetUnavailable() == wsbridgev1.BackendUnavailable_BACKEND_UNAVAILABLE_LAG
	})
	if r := row(1); r.GetAvailable() || r.GetHead() != 19_000_000 {
		t.Fatalf("the node behind: %v", r)
	}
	for i := range 20 {
		res, err := bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "web3_clientVersion"})
		if err != nil || res.GetResult().GetStringValue() != "ahead" {
			t.Fatalf("call %d: %v %v (the node behind must get none)", i, res, err)
		}
	}
	behind.head.Store(19_000_095) // within 10 blocks
	waitFor("the node behind available again", func() bool { return row(1).GetAvailable() })
	answered := map[string]int{}
	for range 20 {
		res, err := bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "web3_clientVersion"})
		if err != nil {
			t.Fatal(err)
		}
		answered[res.GetResult().GetStringValue()]++
	}
	if answered["behind"] == 0 {
		t.Fatalf("answers %v: the node that caught up gets no calls", answered)
	}
}
