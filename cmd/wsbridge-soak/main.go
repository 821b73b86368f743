// Command wsbridge-soak runs the reliability catalogue's long scenarios
// against the built binaries: `wsbridge backend` and `wsbridge serve` as
// separate processes, gRPC and /ws clients calling at a steady rate with a
// nonce per call, and the backend restarted (scenario 16) or flapping
// (scenario 6) meanwhile. It prints the invariants, the gateway's RSS and
// goroutines at the start and the end, and exits 1 if an invariant broke.
//
//	go run ./cmd/wsbridge-soak --wsbridge bin/wsbridge --duration 2m
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
	"github.com/wsbridge/wsbridge/internal/childproc"
)

type config struct {
	binary       string
	duration     time.Duration
	rate         int
	clients      int
	mode         string
	restartEvery time.Duration
	flapUp       time.Duration
	flapDown     time.Duration
	deadline     time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.binary, "wsbridge", "bin/wsbridge", "the wsbridge binary")
	flag.DurationVar(&cfg.duration, "duration", 2*time.Minute, "how long to run")
	flag.IntVar(&cfg.rate, "rate", 500, "calls per second, all clients together")
	flag.IntVar(&cfg.clients, "clients", 20, "concurrent clients (half gRPC, half /ws)")
	flag.StringVar(&cfg.mode, "mode", "restart", "restart: kill and restart the backend every --restart-every (scenario 16); flap: --flap-up up, --flap-down down (scenario 6)")
	flag.DurationVar(&cfg.restartEvery, "restart-every", 20*time.Second, "restart mode: time between backend restarts")
	flag.DurationVar(&cfg.flapUp, "flap-up", 200*time.Millisecond, "flap mode: time up")
	flag.DurationVar(&cfg.flapDown, "flap-down", 200*time.Millisecond, "flap mode: time down")
	flag.DurationVar(&cfg.deadline, "deadline", 2*time.Second, "per-call deadline")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

// waitLog waits up to 30 s for a child's log line.
func waitLog(p *childproc.Proc, msg string) (map[string]any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return p.WaitLog(ctx, msg)
}

// rss returns a process's resident set size in KiB.
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return -1
}

type tally struct {
	started, ok, failed, misdelivered, overdue atomic.Int64
	codes                                      sync.Map // code -> *atomic.Int64
}

func (t *tally) end(code string, d, deadline time.Duration) {
	if code == "OK" {
		t.ok.Add(1)
	} else {
		t.failed.Add(1)
	}
	if d > deadline+100*time.Millisecond {
		t.overdue.Add(1)
	}
	v, _ := t.codes.LoadOrStore(code, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func run(ctx context.Context, cfg config) error {
	be, err := childproc.Start(cfg.binary, "backend", "--listen", "127.0.0.1:0")
	if err != nil {
		return err
	}
	m, err := waitLog(be, "demo backend listening")
	if err != nil {
		return err
	}
	backendURL := m["url"].(string)
	backendAddr := strings.TrimSuffix(strings.TrimPrefix(backendURL, "ws://"), "/")
	gw, err := childproc.Start(cfg.binary, "serve", "--backend", backendURL, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--backoff-base", "100ms", "--backoff-max", "1s")
	if err != nil {
		be.Kill()
		return err
	}
	defer gw.Kill()
	m, err = waitLog(gw, "wsbridge listening")
	if err != nil {
		return err
	}
	grpcAddr, httpAddr := m["grpc"].(string), m["http"].(string)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	bridgeClient := wsbridgev1.NewBridgeServiceClient(conn)
	statsClient := wsbridgev1.NewStatsServiceClient(conn)
	if _, err := bridgeClient.Call(ctx, &wsbridgev1.CallRequest{Method: "echo", WaitForReady: true}); err != nil {
		return fmt.Errorf("warm-up call: %w", err)
	}
	fmt.Printf("soak: mode %s for %v at %d calls/s over %d clients\n", cfg.mode, cfg.duration, cfg.rate, cfg.clients)

	runCtx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()
	var t tally
	var wg sync.WaitGroup
	perClient := time.Duration(float64(time.Second) * float64(cfg.clients) / float64(cfg.rate))
	for i := range cfg.clients {
		if i%2 == 0 {
			wg.Go(func() { grpcClient(runCtx, bridgeClient, i, perClient, cfg.deadline, &t) })
		} else {
			wg.Go(func() { wsClient(runCtx, "ws://"+httpAddr+"/ws", i, perClient, cfg.deadline, &t) })
		}
	}

	// The start figures are taken after a warm-up under load, so that RSS
	// growth measures drift, not the heap settling.
	warmup := min(10*time.Second, cfg.duration/5)
	time.Sleep(warmup)
	begin, err := statsClient.GetStats(ctx, &wsbridgev1.GetStatsRequest{})
	if err != nil {
		return err
	}
	rssStart := rss(gw.Pid())

	var restarts atomic.Int64
	wg.Go(func() {
		current := be
		defer func() { current.Kill() }()
		for {
			wait, down := cfg.restartEvery, 100*time.Millisecond
			if cfg.mode == "flap" {
				wait, down = cfg.flapUp, cfg.flapDown
			}
			select {
			case <-runCtx.Done():
				return
			case <-time.After(wait):
			}
			current.Kill()
			select {
			case <-runCtx.Done():
				return
			case <-time.After(down):
			}
			next, err := childproc.Start(cfg.binary, "backend", "--listen", backendAddr)
			if err != nil {
				fmt.Fprintln(os.Stderr, "soak: restarting the backend:", err)
				return
			}
			if _, err := waitLog(next, "demo backend listening"); err != nil {
				fmt.Fprintln(os.Stderr, "soak:", err)
				return
			}
			current = next
			restarts.Add(1)
		}
	})
	wg.Wait()

	// Let the gateway settle, then read the end state.
	time.Sleep(2 * time.Second)
	end, err := statsClient.GetStats(ctx, &wsbridgev1.GetStatsRequest{})
	if err != nil {
		return err
	}
	rssEnd := rss(gw.Pid())
	fmt.Printf("\n| figure | start (after %v warm-up) | end |\n|---|---|---|\n", warmup)
	fmt.Printf("| gateway RSS (KiB) | %d | %d |\n", rssStart, rssEnd)
	fmt.Printf("| gateway goroutines | %d | %d |\n", begin.Goroutines, end.Goroutines)
	fmt.Printf("| calls in flight | %d | %d |\n", begin.InFlight, end.InFlight)
	fmt.Printf("| backend connects | %d | %d |\n", begin.BackendConnects, end.BackendConnects)
	fmt.Printf("| backend reconnects | %d | %d |\n", begin.BackendReconnects, end.BackendReconnects)
	fmt.Printf("\nbackend restarts: %d; calls: %d started, %d ok, %d failed\n", restarts.Load(), t.started.Load(), t.ok.Load(), t.failed.Load())
	t.codes.Range(func(k, v any) bool {
		fmt.Printf("  %s: %d\n", k, v.(*atomic.Int64).Load())
		return true
	})
	ended := t.ok.Load() + t.failed.Load()
	fmt.Printf("\nI1 every call ended once, by its deadline: %v (%d started, %d ended, %d overdue)\n", ended == t.started.Load() && t.overdue.Load() == 0, t.started.Load(), ended, t.overdue.Load())
	fmt.Printf("I2 no reply to the wrong caller: %v (%d misdelivered)\n", t.misdelivered.Load() == 0, t.misdelivered.Load())
	fmt.Printf("I3 nothing left in flight, goroutines back: %v (in flight %d; goroutines %d -> %d)\n", end.InFlight == 0, end.InFlight, begin.Goroutines, end.Goroutines)
	fmt.Printf("I4 at most the configured backend connections: %v (%d open)\n", end.BackendConnsOpen <= 1, end.BackendConnsOpen)
	growth := float64(rssEnd-rssStart) / float64(rssStart) * 100
	fmt.Printf("RSS growth: %.1f%%\n", growth)
	if ended != t.started.Load() || t.overdue.Load() != 0 || t.misdelivered.Load() != 0 || end.InFlight != 0 || end.BackendConnsOpen > 1 ||
		end.Goroutines > begin.Goroutines+10 {
		return errors.New("an invariant broke")
	}
	return nil
}

func grpcClient(ctx context.Context, c wsbridgev1.BridgeServiceClient, id int, every, deadline time.Duration, t *tally) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		nonce := fmt.Sprintf("g%d-%d", id, n)
		params, _ := structpb.NewValue([]any{nonce})
		callCtx, cancel := context.WithTimeout(context.Background(), deadline)
		t.started.Add(1)
		start := time.Now()
		res, err := c.Call(callCtx, &wsbridgev1.CallRequest{Method: "echo", Params: params})
		cancel()
		if err == nil {
			if got := res.Result.GetListValue().GetValues(); len(got) != 1 || got[0].GetStringValue() != nonce {
				t.misdelivered.Add(1)
			}
		}
		t.end(status.Code(err).String(), time.Since(start), deadline)
	}
}

func wsClient(ctx context.Context, url string, id int, every, deadline time.Duration, t *tally) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	var conn *websocket.Conn
	defer func() {
		if conn != nil {
			conn.CloseNow()
		}
	}()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t.started.Add(1)
		start := time.Now()
		code := func() string {
			callCtx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			if conn == nil {
				c, _, err := websocket.Dial(callCtx, url, nil)
				if err != nil {
					return "DIAL_FAILED"
				}
				conn = c
			}
			nonce := fmt.Sprintf("w%d-%d", id, n)
			if err := conn.Write(callCtx, websocket.MessageText, fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"echo","params":[%q]}`, n, nonce)); err != nil {
				conn = nil
				return "WS_WRITE_FAILED"
			}
			_, b, err := conn.Read(callCtx)
			if err != nil {
				conn = nil
				if errors.Is(err, context.DeadlineExceeded) {
					return codes.DeadlineExceeded.String()
				}
				return "WS_READ_FAILED"
			}
			var r struct {
				ID     int `json:"id"`
				Result []string
				Error  *struct{ Code int }
			}
			if json.Unmarshal(b, &r) != nil || r.ID != n {
				t.misdelivered.Add(1)
				return "BAD_REPLY"
			}
			if r.Error != nil {
				return "JSONRPC_" + strconv.Itoa(r.Error.Code)
			}
			if len(r.Result) != 1 || r.Result[0] != nonce {
				t.misdelivered.Add(1)
			}
			return "OK"
		}()
		t.end(code, time.Since(start), deadline)
	}
}
