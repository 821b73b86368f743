package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/coder/websocket"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// signalled returns a context ended by SIGINT or SIGTERM.
func signalled() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// ready prints the listening address for the runner to read.
func ready(addr net.Addr) { fmt.Printf("listening %s\n", addr) }

type echo struct {
	wsbridgev1.UnimplementedBridgeServiceServer
}

func (echo) Call(_ context.Context, req *wsbridgev1.CallRequest) (*wsbridgev1.CallResponse, error) {
	return &wsbridgev1.CallResponse{Result: req.GetParams()}, nil
}

func serveGRPC(listen string, svc wsbridgev1.BridgeServiceServer) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	wsbridgev1.RegisterBridgeServiceServer(s, svc)
	reflection.Register(s)
	ctx, stop := signalled()
	defer stop()
	go func() { <-ctx.Done(); s.Stop() }()
	ready(ln.Addr())
	return s.Serve(ln)
}

func echoServer(args []string) error {
	fs := flag.NewFlagSet("echo-server", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	_ = fs.Parse(args)
	return serveGRPC(*listen, echo{})
}

func restGateway(args []string) error {
	fs := flag.NewFlagSet("rest-gateway", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	upstream := fs.String("grpc", "", "the gRPC server to proxy to")
	_ = fs.Parse(args)
	ctx, stop := signalled()
	defer stop()
	mux := runtime.NewServeMux()
	if err := wsbridgev1.RegisterBridgeServiceHandlerFromEndpoint(ctx, mux, *upstream,
		[]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); hs.Close() }()
	ready(ln.Addr())
	if err := hs.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// naive dials a backend WebSocket for every call.
type naive struct {
	wsbridgev1.UnimplementedBridgeServiceServer
	backend string
}

func (n naive) Call(ctx context.Context, req *wsbridgev1.CallRequest) (*wsbridgev1.CallResponse, error) {
	conn, _, err := websocket.Dial(ctx, n.backend, nil)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	defer conn.CloseNow()
	conn.SetReadLimit(4 << 20)
	params, err := protojson.Marshal(req.GetParams())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	method, _ := json.Marshal(req.GetMethod())
	frame := `{"jsonrpc":"2.0","id":1,"method":` + string(method) + `,"params":` + string(params) + `}`
	if err := conn.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	_, b, err := conn.Read(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	var reply struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(b, &reply); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	var v structpb.Value
	if err := protojson.Unmarshal(reply.Result, &v); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	conn.Close(websocket.StatusNormalClosure, "")
	return &wsbridgev1.CallResponse{Result: &v}, nil
}

func naiveGateway(args []string) error {
	fs := flag.NewFlagSet("naive-gateway", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	backend := fs.String("backend", "", "backend ws:// URL")
	_ = fs.Parse(args)
	return serveGRPC(*listen, naive{backend: *backend})
}

func wanProxy(args []string) error {
	fs := flag.NewFlagSet("wan-proxy", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "listen address")
	upstream := fs.String("upstream", "", "host:port of the backend")
	oneWay := fs.Duration("one-way", 5*time.Millisecond, "latency added in each direction")
	_ = fs.Parse(args)
	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(api, "wan", *listen, *upstream)
	if err := p.Start(); err != nil {
		return err
	}
	for _, stream := range []string{"upstream", "downstream"} {
		js := fmt.Sprintf(`{"name":"wan-%s","type":"latency","stream":%q,"attributes":{"latency":%d}}`, stream, stream, oneWay.Milliseconds())
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			return err
		}
	}
	ctx, stop := signalled()
	defer stop()
	fmt.Printf("listening %s\n", p.Listen)
	<-ctx.Done()
	p.Stop()
	return nil
}
