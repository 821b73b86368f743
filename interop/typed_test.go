package interop

import (
	"context"
	"encoding/binary"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/ethereum/go-ethereum/common"
	"github.com/ethereum/go-ethereum/common/hexutil"
	"github.com/ethereum/go-ethereum/rpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	ethv1 "github.com/wsbridge/wsbridge/examples/ethereum/gen/eth/v1"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/childproc"
)

// The typed API of examples/ethereum, served by the wsbridge binary from
// the committed eth.binpb, in front of a go-ethereum rpc server that
// implements the eth_ methods it maps (a fake chain), and called the ways a
// user calls it: the Go client generated from eth.proto, grpcurl, curl on
// the REST routes, and connect-go (Connect and gRPC-Web).

// blockNumber is above 2^53: a float64 would turn it into ...992.
const blockNumber = 0x20000000000001 // 9007199254740993

var balance, _ = new(big.Int).SetString("1234567890abcdef1234567890", 16) // more than 64 bits

// eth is the fake node's eth_ namespace.
type eth struct {
	subs atomic.Int64 // live newHeads subscriptions
}

func (*eth) BlockNumber() hexutil.Uint64 { return blockNumber }

type notFound struct{}

func (notFound) Error() string  { return "no such account" }
func (notFound) ErrorCode() int { return -32001 }

func (*eth) GetBalance(addr common.Address, block *rpc.BlockNumberOrHash) (*hexutil.Big, error) {
	if addr == (common.Address{}) {
		return nil, notFound{}
	}
	if block != nil {
		if n, ok := block.Number(); !ok || n != rpc.LatestBlockNumber {
			return (*hexutil.Big)(big.NewInt(1)), nil // anything but latest: 1 wei
		}
	}
	return (*hexutil.Big)(balance), nil
}

type callArgs struct {
	From  *common.Address `json:"from"`
	To    *common.Address `json:"to"`
	Gas   *hexutil.Uint64 `json:"gas"`
	Value *hexutil.Big    `json:"value"`
	Data  *hexutil.Bytes  `json:"data"`
}

// Call answers the gas it was given (8 bytes, big-endian) and then the
// data, so that the test sees both arrive exactly.
func (*eth) Call(args callArgs, block *rpc.BlockNumberOrHash) (hexutil.Bytes, error) {
	if args.To == nil {
		return nil, errors.New("no to")
	}
	out := make([]byte, 8)
	if args.Gas != nil {
		binary.BigEndian.PutUint64(out, uint64(*args.Gas))
	}
	if args.Data != nil {
		out = append(out, *args.Data...)
	}
	return out, nil
}

func header(n uint64) map[string]any {
	return map[string]any{
		"number": hexutil.Uint64(n), "hash": common.BigToHash(new(big.Int).SetUint64(n + 1000)),
		"parentHash": common.BigToHash(new(big.Int).SetUint64(n + 999)), "timestamp": hexutil.Uint64(1700000000 + n),
		"gasLimit": hexutil.Uint64(30_000_000), "gasUsed": hexutil.Uint64(21_000), "miner": common.HexToAddress("0x00000000000000000000000000000000000000aa"),
		"logsBloom": hexutil.Bytes(make([]byte, 256)), // a field the messages do not name: dropped
	}
}

func (*eth) GetBlockByNumber(number rpc.BlockNumber, full bool) (map[string]any, error) {
	if full {
		return nil, errors.New("full transactions are not in this fake chain")
	}
	n := uint64(blockNumber)
	if number >= 0 {
		n = uint64(number)
	}
	b := header(n)
	b["transactions"] = []common.Hash{common.HexToHash("0x01"), common.HexToHash("0x02")}
	return b, nil
}

// NewHeads is eth_subscribe("newHeads"): a header every 5 ms.
func (e *eth) NewHeads(ctx context.Context) (*rpc.Subscription, error) {
	notifier, ok := rpc.NotifierFromContext(ctx)
	if !ok {
		return nil, rpc.ErrNotificationsUnsupported
	}
	sub := notifier.CreateSubscription()
	e.subs.Add(1)
	go func() {
		defer e.subs.Add(-1)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for n := uint64(blockNumber); ; n++ {
			select {
			case <-t.C:
				if notifier.Notify(sub.ID, header(n)) != nil {
					return
				}
			case <-sub.Err():
				return
			}
		}
	}()
	return sub, nil
}

// ethNode serves e with go-ethereum over WebSocket on loopback.
func ethNode(t *testing.T, e *eth) string {
	t.Helper()
	srv := rpc.NewServer()
	if err := srv.RegisterName("eth", e); err != nil {
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

// typedGateway builds and starts `wsbridge serve --descriptor-set
// ../examples/ethereum/eth.binpb --backend URL` as a user would, and returns
// its gRPC and HTTP addresses.
func typedGateway(t *testing.T, backend string) (grpcAddr, httpAddr string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "wsbridge")
	build := exec.Command("go", "build", "-o", bin, "./cmd/wsbridge")
	build.Dir = ".." // in the main module, with its go.sum
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	p, err := childproc.Start(bin, "serve", "--descriptor-set", "../examples/ethereum/eth.binpb", "--backend", backend,
		"--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	m, err := p.WaitLog(ctxT(t), "wsbridge listening")
	if err != nil {
		t.Fatal(err)
	}
	return m["grpc"].(string), m["http"].(string)
}

func TestTypedEthereumAPI(t *testing.T) {
	node := &eth{}
	grpcAddr, httpAddr := typedGateway(t, ethNode(t, node))
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := ethv1.NewEthClient(conn)
	const addr = "0x00000000000000000000000000000000000000Ab"

	t.Run("generated Go client", func(t *testing.T) {
		bn, err := client.BlockNumber(ctxT(t), &ethv1.BlockNumberRequest{})
		if err != nil || bn.GetNumber() != blockNumber {
			t.Fatalf("BlockNumber: %v %v (want %d exactly)", bn, err, uint64(blockNumber))
		}
		bal, err := client.GetBalance(ctxT(t), &ethv1.GetBalanceRequest{Address: addr})
		if err != nil || bal.GetBalance() != hexutil.EncodeBig(balance) {
			t.Fatalf("GetBalance: %v %v", bal, err)
		}
		old := "0x10"
		if bal, err := client.GetBalance(ctxT(t), &ethv1.GetBalanceRequest{Address: addr, Block: &old}); err != nil || bal.GetBalance() != "0x1" {
			t.Fatalf("GetBalance at a block: %v %v", bal, err)
		}
		gas := uint64(blockNumber) // above 2^53 on the way to the node too
		res, err := client.Call(ctxT(t), &ethv1.CallRequest{Transaction: &ethv1.Transaction{To: addr, Gas: &gas, Data: "0xcafe"}})
		data, derr := hexutil.Decode(res.GetData())
		if err != nil || derr != nil || len(data) != 10 || binary.BigEndian.Uint64(data) != gas || data[8] != 0xca {
			t.Fatalf("Call: %s %v %v", res.GetData(), err, derr)
		}
		block, err := client.GetBlockByNumber(ctxT(t), &ethv1.GetBlockByNumberRequest{Number: "0x2a"})
		if err != nil || block.GetNumber() != 42 || block.GetGasLimit() != 30_000_000 || len(block.GetTransactions()) != 2 || len(block.GetHash()) != 66 ||
			block.GetMiner() != "0x00000000000000000000000000000000000000aa" {
			t.Fatalf("GetBlockByNumber: %v %v", block, err)
		}
		// A node error: its code in the BackendError detail.
		_, err = client.GetBalance(ctxT(t), &ethv1.GetBalanceRequest{Address: "0x0000000000000000000000000000000000000000"})
		st := status.Convert(err)
		var be *wsbridgev1.BackendError
		for _, d := range st.Details() {
			if x, ok := d.(*wsbridgev1.BackendError); ok {
				be = x
			}
		}
		if st.Code() != codes.Unknown || be == nil || be.Code != -32001 || be.Message != "no such account" {
			t.Fatalf("GetBalance of the zero account: %v", err)
		}
		// A result that does not fit the response: that call fails alone.
		full, err := client.GetBlockByNumber(ctxT(t), &ethv1.GetBlockByNumberRequest{Number: "latest", FullTransactions: true})
		if err == nil {
			t.Fatalf("full transactions: %v", full)
		}
		if _, err := client.BlockNumber(ctxT(t), &ethv1.BlockNumberRequest{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("SubscribeNewHeads streams", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctxT(t))
		stream, err := client.SubscribeNewHeads(ctx, &ethv1.SubscribeNewHeadsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var last uint64
		for range 3 {
			h, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if h.GetNumber() < blockNumber || h.GetNumber() <= last && last != 0 || len(h.GetParentHash()) != 66 {
				t.Fatalf("header %v after %d", h, last)
			}
			last = h.GetNumber()
		}
		cancel()
		deadline := time.Now().Add(10 * time.Second)
		for node.subs.Load() != 0 { // the gateway unsubscribes at the node
			if time.Now().After(deadline) {
				t.Fatal("the node subscription outlived the stream")
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	t.Run("grpcurl with no proto files", func(t *testing.T) {
		grpcurl := filepath.Join("..", ".bin", "grpcurl")
		if _, err := os.Stat(grpcurl); err != nil {
			t.Fatalf("grpcurl: %v (make tools installs it)", err)
		}
		out, err := exec.Command(grpcurl, "-plaintext", grpcAddr, "list").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "eth.v1.Eth") {
			t.Fatalf("grpcurl list: %v\n%s", err, out)
		}
		out, err = exec.Command(grpcurl, "-plaintext", "-d", `{"address":"`+addr+`"}`, grpcAddr, "eth.v1.Eth/GetBalance").CombinedOutput()
		if err != nil || !strings.Contains(string(out), hexutil.EncodeBig(balance)) {
			t.Fatalf("grpcurl GetBalance: %v\n%s", err, out)
		}
		out, err = exec.Command(grpcurl, "-plaintext", grpcAddr, "eth.v1.Eth/BlockNumber").CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"9007199254740993"`) {
			t.Fatalf("grpcurl BlockNumber: %v\n%s", err, out)
		}
	})

	t.Run("curl on the REST routes", func(t *testing.T) {
		for path, want := range map[string]string{
			"/v1/eth/balance/" + addr:                      `"balance":"` + hexutil.EncodeBig(balance) + `"`,
			"/v1/eth/block-number":                         `"number":"9007199254740993"`,
			"/v1/eth/blocks/0x2a":                          `"number":"42"`,
			"/v1/eth/balance/0x" + strings.Repeat("0", 40): `"code":2`,
		} {
			out, err := exec.Command("curl", "-sS", "http://"+httpAddr+path).CombinedOutput()
			if err != nil || !strings.Contains(string(out), want) {
				t.Errorf("curl %s: %v\n%s", path, err, out)
			}
		}
		// Call data as every Ethereum tool writes it, 0x hex: it reaches the
		// node as those four bytes (the node answers 8 bytes of gas, then
		// the data), and comes back as 0x hex. Data that is not hex is
		// refused by the node: 400.
		for data, want := range map[string]string{
			`"0x70a08231"`: `"data":"0x000000000000000070a08231"`,
			`"hello"`:      `"code":3`,
		} {
			out, err := exec.Command("curl", "-sS", "-w", " %{http_code}", "-X", "POST", "-H", "Content-Type: application/json",
				"-d", `{"transaction":{"to":"`+addr+`","data":`+data+`}}`, "http://"+httpAddr+"/v1/eth/call").CombinedOutput()
			wantCode := " 200"
			if data == `"hello"` {
				wantCode = " 400"
			}
			if err != nil || !strings.Contains(string(out), want) || !strings.HasSuffix(string(out), wantCode) {
				t.Errorf("curl POST /v1/eth/call with data %s: %v\n%s", data, err, out)
			}
		}
	})

	t.Run("connect-go", func(t *testing.T) {
		base := "http://" + httpAddr
		for _, opts := range [][]connect.ClientOption{nil, {connect.WithGRPCWeb()}, {connect.WithProtoJSON()}} {
			bal := connect.NewClient[ethv1.GetBalanceRequest, ethv1.GetBalanceResponse](http.DefaultClient, base+"/eth.v1.Eth/GetBalance", opts...)
			res, err := bal.CallUnary(ctxT(t), connect.NewRequest(&ethv1.GetBalanceRequest{Address: addr}))
			if err != nil || res.Msg.GetBalance() != hexutil.EncodeBig(balance) {
				t.Fatalf("connect GetBalance %d options: %v %v", len(opts), res, err)
			}
		}
		heads := connect.NewClient[ethv1.SubscribeNewHeadsRequest, ethv1.Header](http.DefaultClient, base+"/eth.v1.Eth/SubscribeNewHeads")
		ctx, cancel := context.WithCancel(ctxT(t))
		defer cancel()
		stream, err := heads.CallServerStream(ctx, connect.NewRequest(&ethv1.SubscribeNewHeadsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if !stream.Receive() {
				t.Fatalf("connect stream: %v", stream.Err())
			}
			if stream.Msg().GetNumber() < blockNumber {
				t.Fatalf("header %v", stream.Msg())
			}
		}
		// A node error through Connect: the code and the detail.
		_, err = connect.NewClient[ethv1.GetBalanceRequest, ethv1.GetBalanceResponse](http.DefaultClient, base+"/eth.v1.Eth/GetBalance").
			CallUnary(ctxT(t), connect.NewRequest(&ethv1.GetBalanceRequest{Address: "0x" + strings.Repeat("0", 40)}))
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeUnknown || ce.Message() != "no such account" {
			t.Fatalf("connect error: %v", err)
		}
	})
}
