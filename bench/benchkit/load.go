package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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
		P99ms: ms(h.ValueAtQuantile(99)), MaxMs: ms(h.Max()),
	}
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	mode := fs.String("mode", "http", "http (one request per call, N workers) or ws (one connection, N calls in flight)")
	url := fs.String("url", "", "endpoint")
	body := fs.String("body", "", "http: the request body")
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
		r, err = loadHTTP(*url, *body, *conc, *warm, *dur)
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

func loadHTTP(url, body string, conc int, warm, dur time.Duration) (result, error) {
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
	for i := range conc {
		hists[i] = newHist()
		wg.Go(func() {
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
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					ok = resp.StatusCode == 200
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

// loadWS keeps conc JSON-RPC calls in flight on one WebSocket.
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

// idleClients opens n /ws clients, says "ready", and holds them until
// stdin closes.
func idleClients(args []string) error {
	fs := flag.NewFlagSet("idle-clients", flag.ExitOnError)
	url := fs.String("url", "", "the /ws endpoint")
	n := fs.Int("n", 10000, "clients")
	_ = fs.Parse(args)
	conns := make([]*websocket.Conn, 0, *n)
	defer func() {
		for _, c := range conns {
			c.CloseNow()
		}
	}()
	for i := range *n {
		c, _, err := websocket.Dial(context.Background(), *url, nil)
		if err != nil {
			return fmt.Errorf("client %d: %w", i, err)
		}
		// Read in the background so pings are answered, as a live client would.
		go func() {
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					return
				}
			}
		}()
		conns = append(conns, c)
	}
	fmt.Printf("ready %d\n", len(conns))
	_, _ = io.Copy(io.Discard, os.Stdin)
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
