package wsutil

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns a client connection whose server side writes msgs, one
// message each, then waits for the client to close.
func pair(t *testing.T, msgs ...[]byte) *websocket.Conn {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		for _, m := range msgs {
			if err := ws.Write(r.Context(), websocket.MessageText, m); err != nil {
				return
			}
		}
		_, _, _ = ws.Read(r.Context())
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(-1)
	t.Cleanup(func() { ws.Close(websocket.StatusNormalClosure, "") })
	return ws
}

// A message over the limit yields its head and size; the next message
// reads as usual, and one exactly at the limit is whole.
func TestReadMessageOverLimit(t *testing.T) {
	const limit = 1000
	big := append([]byte(`{"id":7,"result":"`), bytes.Repeat([]byte("x"), 100_000)...)
	at := bytes.Repeat([]byte("a"), limit)
	ws := pair(t, big, at, []byte("small"), bytes.Repeat([]byte("b"), limit+1))
	ctx := context.Background()

	_, _, err := ReadMessage(ctx, ws, limit)
	var tl *TooLargeError
	if !errors.As(err, &tl) {
		t.Fatalf("err %v, want a *TooLargeError", err)
	}
	if tl.Size != int64(len(big)) || tl.Limit != limit || !bytes.Equal(tl.Head, big[:limit]) || tl.Type != websocket.MessageText {
		t.Fatalf("size %d limit %d head %d bytes (%q...), want %d, %d, the first %d bytes",
			tl.Size, tl.Limit, len(tl.Head), tl.Head[:min(20, len(tl.Head))], len(big), limit, limit)
	}
	for _, want := range [][]byte{at, []byte("small")} {
		if _, msg, err := ReadMessage(ctx, ws, limit); err != nil || !bytes.Equal(msg, want) {
			t.Fatalf("next message: %d bytes, %v; want %d bytes", len(msg), err, len(want))
		}
	}
	if _, _, err := ReadMessage(ctx, ws, limit); !errors.As(err, &tl) || tl.Size != limit+1 {
		t.Fatalf("one byte over: %v", err)
	}
}

// Reading a message far over the limit allocates about the limit, not
// the message.
func TestReadMessageOverLimitAllocatesTheLimit(t *testing.T) {
	const limit = 64 << 10
	huge := bytes.Repeat([]byte("x"), 16<<20)
	ws := pair(t, huge, []byte("next"))
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := ReadMessage(context.Background(), ws, limit)
	runtime.ReadMemStats(&after)
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Size != int64(len(huge)) {
		t.Fatalf("err %v", err)
	}
	// The writer's side allocates too (its frames); well under the 16 MiB
	// of the message either way.
	got := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d bytes", got)
	if got > 1<<20 {
		t.Fatalf("reading a 16 MiB message with a 64 KiB limit allocated %d bytes", got)
	}
	if _, msg, err := ReadMessage(context.Background(), ws, limit); err != nil || string(msg) != "next" {
		t.Fatalf("next message %q %v", msg, err)
	}
}
