package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/coder/websocket"
)

// result is what load prints: one JSON object.
type result struct {
	Calls   int64   `json:"calls"`
	Errors  int64   `json:"errors"`
	Seconds float64 `json:"seconds"`
	RPS     float64 `json:"rps"`
	P50ms   float64 `json:"p50_ms"`
	P90ms   float64 `json:"p90_ms"`
	P99ms   float64 `json:"p99_ms"`
	P999ms  float64 `json:"p999_ms"`
	MaxMs   float64 `json:"max_ms"`
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)
}

func summarize(h *hdrhistogram.Histogram, errs int64, d time.Duration) result {
	ms := func(v int64) float64 { return float64(v) / 1000 }
	return result{
		Calls: h.TotalCount(), Errors: errs, Seconds: d.Seconds(),
		RPS:   float64(h.TotalCount()) / d.Seconds(),
		P50ms: ms(h.ValueAtQuantile(50)), P90ms: ms(h.ValueAtQuantile(90)),
		P99ms: ms(h.ValueAtQuantile(99)), P999ms: ms(h.ValueAtQuantile(99.9)), MaxMs: ms(h.Max()),
	}
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	mode := fs.String("mode", "http", "http (one request per call, N workers) or ws (one connection, N calls in flight)")
	url := fs.String("url", "", "endpoint")
	body := fs.String("body", "", "http: the request body")
	okText := fs.String("ok", "", "http: a reply counts only when its body contains this (besides status 200)")
	method := fs.String("method", "echo", "ws: the JSON-RPC method")
	params := fs.String("params", "[]", "ws: the JSON-RPC params")
	conc := fs.Int("c", 1, "concurrency")
	dur := fs.Duration("d", 3*time.Second, "measured duration")
	warm := fs.Duration("warmup", 500*time.Millisecond, "unmeasured warm-up")
	_ = fs.Parse(args)
	var r result
	var err error
	switch *mode {
	case "http":
		r, err = loadHTTP(*url, *body, *okText, *conc, *warm, *dur)
	case "ws":
		r, err = loadWS(*url, *method, *params, *conc, *warm, *dur)
	default:
		return fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// loadHTTP runs conc workers, each posting body and waiting for the reply
// before the next, over keep-alive connections (one per worker).
func loadHTTP(url, body, okText string, conc int, warm, dur time.Duration) (result, error) {
	tr := &http.Transport{MaxIdleConns: conc, MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	start := time.Now()
	measureFrom := start.Add(warm)
	end := measureFrom.Add(dur)
	hists := make([]*hdrhistogram.Histogram, conc)
	var errs atomic.Int64
	var wg sync.WaitGroup
	payload := []byte(body)
	want := []byte(okText)
	for i := range conc {
		hists[i] = newHist()
		wg.Go(func() {
			var reply bytes.Buffer
			for {
				t0 := time.Now()
				if t0.After(end) {
					return
				}
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(payload))
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				ok := err == nil
				if err == nil {
					// Read whole: a gateway that answers 200 with a
					// JSON-RPC error must not count as a call served.
					reply.Reset()
					_, err = reply.ReadFrom(resp.Body)
					resp.Body.Close()
					ok = err == nil && resp.StatusCode == 200 && bytes.Contains(reply.Bytes(), want)
				}
				if t0.Before(measureFrom) {
					continue
				}
				if !ok {
					errs.Add(1)
					continue
				}
				_ = hists[i].RecordValue(time.Since(t0).Microseconds())
			}
		})
	}
	wg.Wait()
	total := newHist()
	for _, h := range hists {
		total.Merge(h)
	}
	return summarize(total, errs.Load(), dur), nil
}

// loadWS keeps conc JSON-RPC calls in flight on one WebSocket. The next call
// is written only when a reply has freed a place in the window, so at conc 1
// it makes one call at a time, each after the previous reply: latency, not
// pipelining.
func loadWS(url, method, params string, conc int, warm, dur time.Duration) (result, error) {
	ctx := context.Background()
	conn, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return result{}, err
	}
	defer conn.CloseNow()
	conn.SetReadLimit(64 << 20)
	start := time.Now()
	measureFrom := start.Add(warm)
	end := measureFrom.Add(dur)

	window := make(chan struct{}, conc)
	var mu sync.Mutex
	sent := map[int64]time.Time{}
	hist := newHist()
	var errs atomic.Int64
	readDone := make(chan error, 1)
	var outstanding atomic.Int64
	stopSending := make(chan struct{})
	go func() {
		for {
			_, b, err := conn.Read(ctx)
			if err != nil {
				readDone <- err
				return
			}
			now := time.Now()
			var r struct {
				ID    int64           `json:"id"`
				Error json.RawMessage `json:"error"`
			}
			if json.Unmarshal(b, &r) != nil {
				errs.Add(1)
			}
			mu.Lock()
			t0, ok := sent[r.ID]
			delete(sent, r.ID)
			mu.Unlock()
			if ok && !t0.Before(measureFrom) {
				if r.Error != nil {
					errs.Add(1)
				} else {
					_ = hist.RecordValue(now.Sub(t0).Microseconds())
				}
			}
			<-window
			if outstanding.Add(-1) == 0 {
				select {
				case <-stopSending:
					readDone <- nil
					return
				default:
				}
			}
		}
	}()
	prefix := []byte(`{"jsonrpc":"2.0","id":`)
	suffix := []byte(`,"method":` + strconv.Quote(method) + `,"params":` + params + `}`)
	for id := int64(1); ; id++ {
		window <- struct{}{}
		now := time.Now()
		if now.After(end) {
			<-window
			break
		}
		frame := append(strconv.AppendInt(append([]byte{}, prefix...), id, 10), suffix...)
		mu.Lock()
		sent[id] = now
		mu.Unlock()
		outstanding.Add(1)
		if err := conn.Write(ctx, websocket.MessageText, frame); err != nil {
			return result{}, err
		}
	}
	close(stopSending)
	if outstanding.Load() == 0 {
		return summarize(hist, errs.Load(), dur), nil
	}
	select {
	case err := <-readDone:
		if err != nil {
			return result{}, err
		}
	case <-time.After(30 * time.Second):
		return result{}, errors.New("replies still missing 30s after the run")
	}
	return summarize(hist, errs.Load(), dur), nil
}

// idleClients opens n /ws clients, says "ready N", and holds them until
// stdin closes; then it says "held N closed M", M being the clients the
// server closed or lost meanwhile.
//
// One source address has one ephemeral port range (net.ipv4.ip_local_port_range,
// about 28,000 ports), and every connection to the one server port needs its
// own 4-tuple. So every -per-source clients move to the next loopback source
// address (127.0.0.1, then 127.0.0.2, ...), all of which Linux routes to lo.
func idleClients(args []string) error {
	fs := flag.NewFlagSet("idle-clients", flag.ExitOnError)
	url := fs.String("url", "", "the /ws endpoint")
	n := fs.Int("n", 10000, "clients")
	perSource := fs.Int("per-source", 20000, "clients per loopback source address")
	dialers := fs.Int("dialers", 8, "handshakes in progress at once")
	_ = fs.Parse(args)
	per := *perSource
	if per <= 0 || *n/per >= 254 {
		return fmt.Errorf("-per-source %d: %d clients need more than 254 source addresses", per, *n)
	}

	// One HTTP client per source address: the handshake goes through it,
	// then coder/websocket takes the connection over.
	clients := make([]*http.Client, (*n+per-1)/per)
	for i := range clients {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i))}}
		clients[i] = &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	conns := make([]*websocket.Conn, *n)
	var closed atomic.Int64
	var readers sync.WaitGroup
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
		readers.Wait()
	}()
	next := make(chan int)
	errc := make(chan error, *dialers)
	var wg sync.WaitGroup
	for range *dialers {
		wg.Go(func() {
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				c, _, err := websocket.Dial(ctx, *url, &websocket.DialOptions{HTTPClient: clients[i/per]})
				cancel()
				if err != nil {
					errc <- fmt.Errorf("client %d (from 127.0.0.%d): %w", i, 1+i/per, err)
					for range next {
						// drain: the others stop too
					}
					return
				}
				conns[i] = c
				// Read in the background so that pings are answered, as a
				// live client would; a read that ends means the client was
				// dropped.
				readers.Go(func() {
					for {
						if _, _, err := c.Read(context.Background()); err != nil {
							closed.Add(1)
							return
						}
					}
				})
			}
		})
	}
	var dialErr error
feed:
	for i := range *n {
		select {
		case next <- i:
		case dialErr = <-errc:
			break feed
		}
	}
	close(next)
	wg.Wait()
	if dialErr == nil {
		select {
		case dialErr = <-errc:
		default:
		}
	}
	if dialErr != nil {
		return dialErr
	}
	fmt.Printf("ready %d\n", *n)
	_, _ = io.Copy(io.Discard, os.Stdin)
	fmt.Printf("held %d closed %d\n", *n, closed.Load())
	return nil
}

// pending puts n sleep calls in flight over conns /ws connections, says
// "sent" once they are all written, and prints the outcome when every
// reply has arrived.
func pending(args []string) error {
	fs := flag.NewFlagSet("pending", flag.ExitOnError)
	url := fs.String("url", "", "the /ws endpoint")
	n := fs.Int("n", 100000, "calls")
	conns := fs.Int("conns", 100, "connections")
	sleepMS := fs.Int("sleep-ms", 15000, "how long each call sleeps at the backend")
	_ = fs.Parse(args)
	per := *n / *conns
	var ok, bad atomic.Int64
	var sentWG, doneWG sync.WaitGroup
	errc := make(chan error, *conns)
	for c := range *conns {
		sentWG.Add(1)
		doneWG.Go(func() {
			conn, _, err := websocket.Dial(context.Background(), *url, nil)
			if err != nil {
				sentWG.Done()
				errc <- err
				return
			}
			defer conn.CloseNow()
			conn.SetReadLimit(1 << 20)
			for i := range per {
				frame := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"sleep","params":[%d]}`, c*per+i, *sleepMS)
				if err := conn.Write(context.Background(), websocket.MessageText, frame); err != nil {
					sentWG.Done()
					errc <- err
					return
				}
			}
			sentWG.Done()
			for range per {
				_, b, err := conn.Read(context.Background())
				if err != nil {
					errc <- err
					return
				}
				if bytes.Contains(b, []byte(`"result"`)) {
					ok.Add(1)
				} else {
					bad.Add(1)
				}
			}
		})
	}
	sentWG.Wait()
	fmt.Println("sent")
	doneWG.Wait()
	close(errc)
	var firstErr error
	for err := range errc {
		if firstErr == nil {
			firstErr = err
		}
	}
	out := map[string]any{"calls": per * *conns, "ok": ok.Load(), "errors": bad.Load()}
	if firstErr != nil {
		out["error"] = firstErr.Error()
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
