package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/jsonpb"
	"github.com/wsbridge/wsbridge/internal/statsdecl"
)

// clientFlags reach a running gateway over gRPC.
type clientFlags struct {
	addr, tokenFile, ca string
	tls, insecure       bool
}

func (c *clientFlags) register(fs *flagSet) {
	fs.StringVar(&c.addr, "grpc-addr", "127.0.0.1:9090", "the gateway's gRPC address")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the bearer token (first line), when the gateway requires one")
	fs.BoolVar(&c.tls, "tls", false, "connect with TLS")
	fs.StringVar(&c.ca, "ca", "", "CA certificate (PEM) to verify the gateway with, for --tls (default: the system roots)")
	fs.bool(&c.insecure, "insecure", false, "allow --token-file over plaintext to an address that is not loopback")
}

// loopbackAddr reports whether host:port names this machine.
func loopbackAddr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *clientFlags) dial(ctx context.Context) (*grpc.ClientConn, context.Context, error) {
	creds := insecure.NewCredentials()
	if c.tls {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.ca != "" {
			pem, err := os.ReadFile(c.ca)
			if err != nil {
				return nil, ctx, err
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return nil, ctx, fmt.Errorf("%s holds no PEM certificate", c.ca)
			}
		}
		creds = credentials.NewTLS(cfg)
	}
	if c.tokenFile != "" {
		if !c.tls && !c.insecure && !loopbackAddr(c.addr) {
			return nil, ctx, fmt.Errorf("--token-file without --tls would send the token in the clear to %s; use --tls, or --insecure if the network is private", c.addr)
		}
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return nil, ctx, err
		}
		tok, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(tok))
	}
	conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(creds))
	return conn, ctx, err
}

// statsCmd prints a running gateway's counters: a table for people, JSON
// for scripts, refreshed with --watch.
func statsCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("stats", stderr)
	var cf clientFlags
	cf.register(fs)
	var asJSON, watch bool
	var interval time.Duration
	var admin string
	fs.bool(&asJSON, "json", false, "print JSON (one object per snapshot)")
	fs.bool(&watch, "watch", false, "keep printing a snapshot every --interval")
	fs.duration(&interval, "interval", 2*time.Second, "time between snapshots with --watch")
	fs.StringVar(&admin, "admin", "", "read the stats from the gateway's admin listener (--admin-addr, e.g. 127.0.0.1:9091) over HTTP, instead of its gRPC port")
	if code, ok := parseArgs(fs, args); !ok {
		return code
	}
	show := func(st *wsbridgev1.Stats) {
		if asJSON {
			b, _ := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(st)
			fmt.Fprintln(stdout, string(b))
			return
		}
		if watch && isTerminal(stdout) {
			fmt.Fprint(stdout, "\033[H\033[2J") // home and clear
		}
		printStats(stdout, st)
	}
	if admin != "" {
		return adminStats(ctx, admin, watch, interval, show, stderr)
	}
	conn, ctx, err := cf.dial(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "stats:", err)
		return 1
	}
	defer conn.Close()
	client := wsbridgev1.NewStatsServiceClient(conn)
	if !watch {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		st, err := client.GetStats(cctx, &wsbridgev1.GetStatsRequest{})
		if err != nil {
			fmt.Fprintln(stderr, "stats:", describe(err))
			return 1
		}
		show(st)
		return 0
	}
	stream, err := client.WatchStats(ctx, &wsbridgev1.WatchStatsRequest{Interval: durationpb.New(interval)})
	if err != nil {
		fmt.Fprintln(stderr, "stats:", describe(err))
		return 1
	}
	for {
		st, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return 0 // interrupted
			}
			fmt.Fprintln(stderr, "stats:", describe(err))
			return 1
		}
		show(st)
	}
}

// adminStats reads GET /v1/stats from the admin listener at addr (no
// token: it is private), once or every interval with watch.
func adminStats(ctx context.Context, addr string, watch bool, interval time.Duration, show func(*wsbridgev1.Stats), stderr io.Writer) int {
	get := func() (*wsbridgev1.Stats, error) {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(cctx, http.MethodGet, "http://"+addr+"/v1/stats", nil)
		if err != nil {
			return nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("%s: HTTP %d: %s", addr, resp.StatusCode, strings.TrimSpace(string(body)))
		}
		var st wsbridgev1.Stats
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &st); err != nil {
			return nil, fmt.Errorf("%s/v1/stats: %w", addr, err)
		}
		return &st, nil
	}
	for {
		st, err := get()
		if err != nil {
			if ctx.Err() != nil {
				return 0 // interrupted
			}
			fmt.Fprintln(stderr, "stats:", err)
			return 1
		}
		show(st)
		if !watch {
			return 0
		}
		select {
		case <-time.After(interval):
		case <-ctx.Done():
			return 0
		}
	}
}

func printStats(w io.Writer, st *wsbridgev1.Stats) {
	_ = statsdecl.Table(w, st)
}

// callCmd makes one call through the gateway and prints the result, or the
// error with its code.
func callCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("call", stderr)
	var cf clientFlags
	cf.register(fs)
	var timeout time.Duration
	var notify, wait bool
	fs.duration(&timeout, "timeout", 30*time.Second, "give up after this long")
	fs.bool(&notify, "notify", false, "send a notification (no reply) instead of a call")
	fs.bool(&wait, "wait-for-ready", false, "wait for the backend while the gateway is reconnecting")
	if code, ok := parseArgs(fs, args); !ok {
		return code
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		fmt.Fprint(stderr, "Usage: wsbridge call [flags] METHOD [PARAMS_JSON]\n\n")
		fs.usage()
		return 2
	}
	method := fs.Arg(0)
	var params *structpb.Value
	if fs.NArg() == 2 {
		v, err := jsonpb.ToValue([]byte(fs.Arg(1)))
		if err != nil {
			fmt.Fprintf(stderr, "call: PARAMS_JSON is not JSON: %v\n", err)
			return 2
		}
		params = v
	}
	conn, ctx, err := cf.dial(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "call:", err)
		return 1
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stop := progress(stderr, "waiting for "+method)
	client := wsbridgev1.NewBridgeServiceClient(conn)
	var res *wsbridgev1.CallResponse
	if notify {
		_, err = client.Notify(ctx, &wsbridgev1.NotifyRequest{Method: method, Params: params})
	} else {
		res, err = client.Call(ctx, &wsbridgev1.CallRequest{Method: method, Params: params, WaitForReady: wait})
	}
	stop()
	if err != nil {
		fmt.Fprintln(stderr, "call:", describe(err))
		return callExit(err)
	}
	if res != nil {
		out, err := jsonpb.AppendValue(nil, res.GetResult())
		if err != nil {
			fmt.Fprintln(stderr, "call:", err)
			return 1
		}
		var pretty any
		_ = json.Unmarshal(out, &pretty)
		b, _ := json.MarshalIndent(pretty, "", "  ")
		fmt.Fprintln(stdout, string(b))
	}
	return 0
}

// The exit codes of `wsbridge call`, so that a script can tell what
// failed.
const (
	exitBackendError = 1 // the backend answered with a JSON-RPC error
	exitUsage        = 2 // the command line is wrong
	exitUnreachable  = 3 // the gateway could not be reached (refused, TLS, no such host)
	exitGateway      = 4 // the gateway refused or failed the call (backend unavailable, deadline, permission, ...)
)

// callExit is the exit code for a failed call.
func callExit(err error) int {
	st, ok := status.FromError(err)
	if !ok {
		return exitUnreachable
	}
	fromGateway := false
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *wsbridgev1.BackendError:
			return exitBackendError
		case *errdetails.ErrorInfo:
			fromGateway = fromGateway || d.GetDomain() == "wsbridge"
		}
	}
	if st.Code() == codes.Unavailable && !fromGateway {
		return exitUnreachable // the client's transport, not the gateway's answer
	}
	return exitGateway
}

// describe renders a gRPC error with its code and, for a backend error,
// the backend's JSON-RPC code and data.
func describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	msg := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	for _, d := range st.Details() {
		if be, ok := d.(*wsbridgev1.BackendError); ok {
			msg += fmt.Sprintf(" (backend JSON-RPC error %d", be.GetCode())
			if be.GetData() != nil {
				if data, err := jsonpb.AppendValue(nil, be.GetData()); err == nil {
					msg += ", data " + string(data)
				}
			}
			msg += ")"
		}
	}
	return msg
}

// progress shows, on a terminal, how long an operation has been waiting
// once it takes more than a second. The returned func stops it.
func progress(w io.Writer, what string) func() {
	if !isTerminal(w) {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		start := time.Now()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		spin := `|/-\`
		shown := false
		for i := 0; ; i++ {
			select {
			case <-done:
				if shown {
					fmt.Fprint(w, "\r\033[K")
				}
				return
			case <-t.C:
				if el := time.Since(start); el > time.Second {
					fmt.Fprintf(w, "\r%c %s… %v", spin[i%4], what, el.Round(time.Second))
					shown = true
				}
			}
		}
	}()
	return func() { close(done); <-finished }
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
