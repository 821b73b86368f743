package server

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sseEvent is one parsed event.
type sseEvent struct{ id, event, data string }

// readSSE opens an event stream at url and returns its events as they
// come; the stream ends when the test's context does.
func readSSE(t *testing.T, ctx context.Context, url string, header http.Header) (<-chan sseEvent, *http.Response) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan sseEvent, 100)
	go func() {
		defer close(events)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.event != "" {
					events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return events, resp
}

func next(t *testing.T, events <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("the stream ended")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event")
	}
	return sseEvent{}
}

// /v1/subscribe and /v1/stats:watch answer text/event-stream to a client
// that asks; ids count up; Last-Event-ID gets a gap event; the drain ends
// the stream with an error event (UNAVAILABLE) for EventSource to
// reconnect elsewhere.
func TestServerSentEvents(t *testing.T) {
	h := start(t, demoBackendWith(t, 10*time.Millisecond), nil)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()

	ticks, resp := readSSE(t, ctx, h.base+"/v1/subscribe?methods=tick", nil)
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	for want := 1; want <= 3; want++ {
		ev := next(t, ticks)
		var n struct{ Method string }
		if ev.event != "notification" || ev.id != strconv.Itoa(want) || json.Unmarshal([]byte(ev.data), &n) != nil || n.Method != "tick" {
			t.Fatalf("event %d: %+v", want, ev)
		}
	}

	resumed, _ := readSSE(t, ctx, h.base+"/v1/subscribe?methods=tick", http.Header{"Last-Event-ID": {"41"}})
	if ev := next(t, resumed); ev.event != "gap" || ev.id != "42" || !strings.Contains(ev.data, `"lastEventId":"41"`) {
		t.Fatalf("after Last-Event-ID 41: %+v", ev)
	}
	if ev := next(t, resumed); ev.event != "notification" || ev.id != "43" {
		t.Fatalf("after the gap: %+v", ev)
	}

	stats, _ := readSSE(t, ctx, h.base+"/v1/stats:watch?interval=100ms", nil)
	for range 2 {
		ev := next(t, stats)
		var st struct {
			InstanceID string `json:"instanceId"`
		}
		if ev.event != "stats" || json.Unmarshal([]byte(ev.data), &st) != nil || st.InstanceID == "" {
			t.Fatalf("stats event %+v", ev)
		}
	}

	// Without Accept: text/event-stream, NDJSON as before.
	code, body := httpDo(t, http.MethodGet, h.base+"/v1/stats:watch?interval=bogus", "", nil)
	if code != http.StatusBadRequest || !strings.Contains(body, `"code"`) {
		t.Fatalf("NDJSON route: %d %s", code, body)
	}

	go func() { _ = h.stop() }()
	for {
		ev := next(t, ticks)
		if ev.event == "error" {
			if !strings.Contains(ev.data, `"code":14`) {
				t.Fatalf("drain: %+v", ev)
			}
			break
		}
	}
}
