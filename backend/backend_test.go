package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"
)

// ioTimeout bounds every read and write a test makes, so that a broken
// server fails the test instead of hanging it.
const ioTimeout = 10 * time.Second

// startServer serves a new Server through httptest and returns its ws:// URL.
// Cleanup shuts the Server down and checks that it did so in time.
func startServer(t *testing.T, opts Options) (*Server, string) {
	t.Helper()
	s := New(opts)
	hs := httptest.NewServer(s)
	t.Cleanup(func() {
		hs.Close()
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s, "ws" + strings.TrimPrefix(hs.URL, "http")
}

// dial connects a client; cleanup drops it (before the server's cleanup,
// which was registered first).
func dial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	c.SetReadLimit(-1)
	t.Cleanup(func() { _ = c.CloseNow() })
	return c
}

func send(t *testing.T, c *websocket.Conn, frame string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(frame)); err != nil {
		t.Fatalf("write %s: %v", frame, err)
	}
}

func recv(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("got a %v frame, want text: %s", typ, b)
	}
	return string(b)
}

func roundTrip(t *testing.T, c *websocket.Conn, frame string) string {
	t.Helper()
	send(t, c, frame)
	return recv(t, c)
}

// readClose reads until the connection ends and returns the close status.
func readClose(t *testing.T, c *websocket.Conn) websocket.StatusCode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	typ, b, err := c.Read(ctx)
	if err == nil {
		t.Fatalf("got a %v frame, want the connection to close: %s", typ, b)
	}
	return websocket.CloseStatus(err)
}

// transcript lists frames sent (-->) and the exact frame expected back (<--),
// in order, on one connection. Replies are compared byte for byte: ids and
// echoed params must survive untouched.
var transcript = []struct{ name, send, want string }{
	// echo
	{"echo object keeps spacing and html",
		`{"jsonrpc":"2.0","id":1,"method":"echo","params":{"b": [1, 2.50, "x"],  "a":"<&>"}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"b": [1, 2.50, "x"],  "a":"<&>"}}`},
	{"echo array keeps escapes",
		`{"jsonrpc":"2.0","id":2,"method":"echo","params":["\u00e9",null,true,1e400]}`,
		`{"jsonrpc":"2.0","id":2,"result":["\u00e9",null,true,1e400]}`},
	{"echo without params",
		`{"jsonrpc":"2.0","id":3,"method":"echo"}`,
		`{"jsonrpc":"2.0","id":3,"result":null}`},
	{"member order does not matter",
		` {"params":[7],"method":"echo","id":4,"jsonrpc":"2.0"} `,
		`{"jsonrpc":"2.0","id":4,"result":[7]}`},

	// add
	{"add integers", `{"jsonrpc":"2.0","id":1,"method":"add","params":[1,2]}`,
		`{"jsonrpc":"2.0","id":1,"result":3}`},
	{"add past uint64", `{"jsonrpc":"2.0","id":1,"method":"add","params":[18446744073709551615,1]}`,
		`{"jsonrpc":"2.0","id":1,"result":18446744073709551616}`},
	{"add past float64 precision", `{"jsonrpc":"2.0","id":1,"method":"add","params":[9007199254740993,-2]}`,
		`{"jsonrpc":"2.0","id":1,"result":9007199254740991}`},
	{"add negatives", `{"jsonrpc":"2.0","id":1,"method":"add","params":[-5,3]}`,
		`{"jsonrpc":"2.0","id":1,"result":-2}`},
	{"add floats", `{"jsonrpc":"2.0","id":1,"method":"add","params":[1.5,2.25]}`,
		`{"jsonrpc":"2.0","id":1,"result":3.75}`},
	{"add integer and float", `{"jsonrpc":"2.0","id":1,"method":"add","params":[1,0.5]}`,
		`{"jsonrpc":"2.0","id":1,"result":1.5}`},
	{"add exponent", `{"jsonrpc":"2.0","id":1,"method":"add","params":[1e2,1]}`,
		`{"jsonrpc":"2.0","id":1,"result":101}`},
	{"add overflow", `{"jsonrpc":"2.0","id":1,"method":"add","params":[1e308,1e308]}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"the sum does not fit in a float64"}}`},
	{"add one number", `{"jsonrpc":"2.0","id":1,"method":"add","params":[1]}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"add takes [a, b], two numbers"}}`},
	{"add a string", `{"jsonrpc":"2.0","id":1,"method":"add","params":["1",2]}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"add takes [a, b], two numbers"}}`},
	{"add by name", `{"jsonrpc":"2.0","id":1,"method":"add","params":{"a":1,"b":2}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"add takes [a, b], two numbers"}}`},
	{"add without params", `{"jsonrpc":"2.0","id":1,"method":"add"}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"add takes [a, b], two numbers"}}`},

	// sleep
	{"sleep object", `{"jsonrpc":"2.0","id":1,"method":"sleep","params":{"ms":0}}`,
		`{"jsonrpc":"2.0","id":1,"result":{"slept_ms":0}}`},
	{"sleep array", `{"jsonrpc":"2.0","id":1,"method":"sleep","params":[2]}`,
		`{"jsonrpc":"2.0","id":1,"result":{"slept_ms":2}}`},
	{"sleep negative", `{"jsonrpc":"2.0","id":1,"method":"sleep","params":{"ms":-1}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"ms must be an integer from 0 to 9223372036854"}}`},
	{"sleep fraction", `{"jsonrpc":"2.0","id":1,"method":"sleep","params":[1.5]}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"ms must be an integer from 0 to 9223372036854"}}`},
	{"sleep string", `{"jsonrpc":"2.0","id":1,"method":"sleep","params":{"ms":"1"}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"ms must be an integer from 0 to 9223372036854"}}`},
	{"sleep empty array", `{"jsonrpc":"2.0","id":1,"method":"sleep","params":[]}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"sleep takes {\"ms\": N} or [N]"}}`},
	{"sleep without params", `{"jsonrpc":"2.0","id":1,"method":"sleep"}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"sleep takes {\"ms\": N} or [N]"}}`},

	// fail
	{"fail with everything", `{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":-32050,"message":"bo\u006fm <b>","data":{"why": [1, 2]}}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32050,"message":"bo\u006fm <b>","data":{"why": [1, 2]}}}`},
	{"fail defaults", `{"jsonrpc":"2.0","id":1,"method":"fail","params":{}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"fail"}}`},
	{"fail without params", `{"jsonrpc":"2.0","id":1,"method":"fail"}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"fail"}}`},
	{"fail with null data keeps it", `{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":7,"data":null}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":7,"message":"fail","data":null}}`},
	{"fail fractional code", `{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":1.5}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"code must be an integer"}}`},
	{"fail number message", `{"jsonrpc":"2.0","id":1,"method":"fail","params":{"message":7}}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"message must be a string"}}`},
	{"fail positional", `{"jsonrpc":"2.0","id":1,"method":"fail","params":[1]}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params","data":"fail takes {\"code\": C, \"message\": M, \"data\": D}, all optional"}}`},

	// errors
	{"parse error", `{"jsonrpc":"2.0","id":1,"method":"echo"`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error","data":"the frame is not valid JSON"}}`},
	{"empty frame", ``,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error","data":"the frame is not valid JSON"}}`},
	{"missing jsonrpc", `{"id":1,"method":"echo"}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":"\"jsonrpc\" must be \"2.0\""}}`},
	{"wrong jsonrpc", `{"jsonrpc":"1.0","id":1,"method":"echo"}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":"\"jsonrpc\" must be \"2.0\""}}`},
	{"numeric jsonrpc", `{"jsonrpc":2.0,"id":1,"method":"echo"}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":"\"jsonrpc\" must be \"2.0\""}}`},
	{"method not a string", `{"jsonrpc":"2.0","id":1,"method":7}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":"\"method\" must be a string"}}`},
	{"method null", `{"jsonrpc":"2.0","id":1,"method":null}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":"\"method\" must be a string"}}`},
	{"member names are case-sensitive", `{"jsonrpc":"2.0","id":1,"Method":"echo"}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":"\"method\" must be a string"}}`},
	{"params a string", `{"jsonrpc":"2.0","id":1,"method":"echo","params":"x"}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":"\"params\" must be an object or an array"}}`},
	{"params null", `{"jsonrpc":"2.0","id":1,"method":"echo","params":null}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Invalid Request","data":"\"params\" must be an object or an array"}}`},
	{"id an object", `{"jsonrpc":"2.0","id":{"a":1},"method":"echo"}`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"\"id\" must be a string, a number or null"}}`},
	{"id a bool", `{"jsonrpc":"2.0","id":true,"method":"echo"}`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"\"id\" must be a string, a number or null"}}`},
	{"a number", `7`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"a request must be an object"}}`},
	{"a string", `"echo"`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"a request must be an object"}}`},
	{"unknown method", `{"jsonrpc":"2.0","id":1,"method":"nope"}`,
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"Method not found","data":"nope"}}`},

	// batches
	{"empty batch", `[]`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"empty batch"}}`},
	{"empty batch with spaces", " [ \n ] ",
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"empty batch"}}`},
	{"batch of non-requests", `[1,2]`,
		`[{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"a request must be an object"}},` +
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"a request must be an object"}}]`},
	{"nested batch", `[[]]`,
		`[{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"a request must be an object"}}]`},
	{"mixed batch",
		`[{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]},` +
			`{"jsonrpc":"2.0","method":"echo","params":[2]},` +
			`{"jsonrpc":"2.0","id":"x","method":"nope"},` +
			`5,` +
			`{"jsonrpc":"2.0","method":"nope"},` +
			`{"jsonrpc":"2.0","id":2,"method":"add","params":[2,3]},` +
			`{"jsonrpc":"2.0","id":3,"method":"sleep","params":[1]}]`,
		`[{"jsonrpc":"2.0","id":1,"result":[1]},` +
			`{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"Method not found","data":"nope"}},` +
			`{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request","data":"a request must be an object"}},` +
			`{"jsonrpc":"2.0","id":2,"result":5},` +
			`{"jsonrpc":"2.0","id":3,"result":{"slept_ms":1}}]`},
	{"broken batch", `[{"jsonrpc":"2.0","id":1,"method":"echo"},`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error","data":"the frame is not valid JSON"}}`},
}

func TestTranscript(t *testing.T) {
	t.Parallel()
	_, url := startServer(t, Options{})
	c := dial(t, url)
	for _, tc := range transcript {
		t.Run(tc.name, func(t *testing.T) {
			if got := roundTrip(t, c, tc.send); got != tc.want {
				t.Errorf("\n--> %s\n<-- %s\nwant %s", tc.send, got, tc.want)
			}
		})
	}
}

func TestIDsAreKeptByteForByte(t *testing.T) {
	t.Parallel()
	_, url := startServer(t, Options{})
	c := dial(t, url)
	for _, id := range []string{
		`0`, `-0`, `1`, `-7`, `1.50`, `1e3`, `1E+3`, `0.1e-400`,
		`18446744073709551616`, `123456789012345678901234567890`,
		`""`, `"abc"`, `"<\u00e9>"`, `"é"`, `"a\"b\\c"`,
		`null`,
	} {
		for _, method := range []string{"echo", "nope"} {
			got := roundTrip(t, c, `{"jsonrpc":"2.0","method":"`+method+`","id":`+id+`}`)
			prefix := `{"jsonrpc":"2.0","id":` + id + `,`
			if !strings.HasPrefix(got, prefix) {
				t.Errorf("id %s, method %s: got %s, want a reply starting %s", id, method, got, prefix)
			}
		}
	}
}

func TestBinaryFrameIsAParseError(t *testing.T) {
	t.Parallel()
	_, url := startServer(t, Options{})
	c := dial(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageBinary, []byte(`{"jsonrpc":"2.0","id":1,"method":"echo"}`)); err != nil {
		t.Fatal(err)
	}
	want := `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error","data":"binary frames are not supported; send JSON in text frames"}}`
	if got := recv(t, c); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	// The connection is still usable.
	if got, want := roundTrip(t, c, `{"jsonrpc":"2.0","id":2,"method":"echo"}`), `{"jsonrpc":"2.0","id":2,"result":null}`; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestNotificationsGetNoReply(t *testing.T) {
	t.Parallel()
	s, url := startServer(t, Options{})
	c := dial(t, url)
	for _, frame := range []string{
		`{"jsonrpc":"2.0","method":"echo","params":[1]}`,
		`{"jsonrpc":"2.0","method":"nope"}`,
		`{"jsonrpc":"2.0","method":"add","params":{"bad":1}}`,
		`{"jsonrpc":"2.0","method":"fail"}`,
		`[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"counter"}]`,
	} {
		if reply := s.handleMessage(context.Background(), []byte(frame)); reply != nil {
			t.Errorf("--> %s\n<-- %s\nwant no reply", frame, reply)
		}
		send(t, c, frame)
	}
	// Frames are read in order, so had any of the notifications above been
	// answered, its reply would most likely come before this one.
	if got, want := roundTrip(t, c, `{"jsonrpc":"2.0","id":"last","method":"counter"}`), `{"jsonrpc":"2.0","id":"last","result":13}`; got != want {
		t.Errorf("got  %s\nwant %s (6 from handleMessage, 6 from the socket, then this one)", got, want)
	}
}

func TestCounter(t *testing.T) {
	t.Parallel()
	s, url := startServer(t, Options{})
	a := dial(t, url)

	steps := []struct{ send, want string }{
		{`{"jsonrpc":"2.0","id":1,"method":"counter"}`, `{"jsonrpc":"2.0","id":1,"result":1}`},
		// A notification counts (2), and so does every batch element (3, 4, 5).
		{`{"jsonrpc":"2.0","method":"counter"}`, ``},
		{`[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","id":2,"method":"counter"},{"jsonrpc":"2.0","id":3,"method":"counter"}]`,
			`[{"jsonrpc":"2.0","id":2,"result":4},{"jsonrpc":"2.0","id":3,"result":5}]`},
		// Invalid requests do not count; unknown methods do (6).
		{`{"jsonrpc":"1.0","id":4,"method":"counter"}`,
			`{"jsonrpc":"2.0","id":4,"error":{"code":-32600,"message":"Invalid Request","data":"\"jsonrpc\" must be \"2.0\""}}`},
		{`{"jsonrpc":"2.0","id":5,"method":"nope"}`,
			`{"jsonrpc":"2.0","id":5,"error":{"code":-32601,"message":"Method not found","data":"nope"}}`},
		{`{"jsonrpc":"2.0","id":6,"method":"counter"}`, `{"jsonrpc":"2.0","id":6,"result":7}`},
	}
	for _, st := range steps {
		if st.want == "" {
			send(t, a, st.send)
			continue
		}
		if got := roundTrip(t, a, st.send); got != st.want {
			t.Errorf("\n--> %s\n<-- %s\nwant %s", st.send, got, st.want)
		}
	}

	// The count is the Server's, across connections.
	b := dial(t, url)
	if got, want := roundTrip(t, b, `{"jsonrpc":"2.0","id":7,"method":"counter"}`), `{"jsonrpc":"2.0","id":7,"result":8}`; got != want {
		t.Errorf("second connection: got %s, want %s", got, want)
	}
	if got := s.Requests(); got != 8 {
		t.Errorf("Requests() = %d, want 8", got)
	}

	// A new Server starts from zero.
	_, url2 := startServer(t, Options{})
	c := dial(t, url2)
	if got, want := roundTrip(t, c, `{"jsonrpc":"2.0","id":8,"method":"counter"}`), `{"jsonrpc":"2.0","id":8,"result":1}`; got != want {
		t.Errorf("new server: got %s, want %s", got, want)
	}
}

func TestRepliesAreWrittenAsTheyFinish(t *testing.T) {
	t.Parallel()
	_, url := startServer(t, Options{})
	c := dial(t, url)
	send(t, c, `{"jsonrpc":"2.0","id":"slow","method":"sleep","params":{"ms":500}}`)
	send(t, c, `{"jsonrpc":"2.0","id":"fast","method":"echo","params":["hi"]}`)
	if got, want := recv(t, c), `{"jsonrpc":"2.0","id":"fast","result":["hi"]}`; got != want {
		t.Errorf("first reply: got %s, want %s", got, want)
	}
	if got, want := recv(t, c), `{"jsonrpc":"2.0","id":"slow","result":{"slept_ms":500}}`; got != want {
		t.Errorf("second reply: got %s, want %s", got, want)
	}
}

// TestSleepEndsWhenClientLeaves is not parallel: it checks that no goroutine
// at all is left once the client has gone, and the Server is deliberately not
// shut down first, since shutting down would end the sleep by itself.
func TestSleepEndsWhenClientLeaves(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	s := New(Options{})
	hs := httptest.NewServer(s)
	url := "ws" + strings.TrimPrefix(hs.URL, "http")

	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	send(t, c, `{"jsonrpc":"2.0","id":1,"method":"sleep","params":{"ms":3600000}}`)
	// Frames are handled in order, so once this is answered the sleep is
	// under way.
	if got, want := roundTrip(t, c, `{"jsonrpc":"2.0","id":2,"method":"echo"}`), `{"jsonrpc":"2.0","id":2,"result":null}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	_ = c.CloseNow()
	hs.Close() // does not touch hijacked connections or the Server

	goleak.VerifyNone(t, ignore)
	if got := s.Requests(); got != 2 {
		t.Errorf("Requests() = %d, want 2", got)
	}
}

func TestTicks(t *testing.T) {
	t.Parallel()
	_, url := startServer(t, Options{Tick: 10 * time.Millisecond})
	c := dial(t, url)
	for want := uint64(1); want <= 2; want++ {
		frame := recv(t, c)
		var n map[string]json.RawMessage
		if err := json.Unmarshal([]byte(frame), &n); err != nil {
			t.Fatalf("%s: %v", frame, err)
		}
		if _, ok := n["id"]; ok || string(n["jsonrpc"]) != `"2.0"` || string(n["method"]) != `"tick"` {
			t.Fatalf("not a tick notification: %s", frame)
		}
		var p struct {
			Seq  uint64 `json:"seq"`
			Time string `json:"time"`
		}
		if err := json.Unmarshal(n["params"], &p); err != nil {
			t.Fatalf("%s: %v", frame, err)
		}
		if p.Seq != want {
			t.Errorf("seq = %d, want %d: %s", p.Seq, want, frame)
		}
		if _, err := time.Parse(time.RFC3339Nano, p.Time); err != nil {
			t.Errorf("time: %v", err)
		}
	}
}

func TestReadLimit(t *testing.T) {
	t.Parallel()
	_, url := startServer(t, Options{ReadLimit: 1024})
	c := dial(t, url)
	small := `{"jsonrpc":"2.0","id":1,"method":"echo","params":["` + strings.Repeat("x", 900) + `"]}`
	if got := roundTrip(t, c, small); !strings.HasPrefix(got, `{"jsonrpc":"2.0","id":1,"result":`) {
		t.Fatalf("small message: got %s", got)
	}
	send(t, c, `{"jsonrpc":"2.0","id":2,"method":"echo","params":["`+strings.Repeat("x", 2000)+`"]}`)
	if got := readClose(t, c); got != websocket.StatusMessageTooBig {
		t.Errorf("close status %v, want %v", got, websocket.StatusMessageTooBig)
	}
}

func TestLargeEcho(t *testing.T) {
	t.Parallel()
	_, url := startServer(t, Options{})
	c := dial(t, url)
	params := `["` + strings.Repeat("0123456789", 200_000) + `"]`
	want := `{"jsonrpc":"2.0","id":1,"result":` + params + `}`
	if got := roundTrip(t, c, `{"jsonrpc":"2.0","id":1,"method":"echo","params":`+params+`}`); got != want {
		t.Errorf("2 MB echo came back different (%d bytes, want %d)", len(got), len(want))
	}
}

func TestServeShutdown(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{})
	ctx, cancel := context.WithCancel(context.Background())
	var serveErr error
	served := make(chan struct{})
	go func() {
		defer close(served)
		serveErr = s.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-served:
		case <-time.After(ioTimeout):
			t.Error("Serve still running at cleanup")
		}
	})

	url := "ws://" + ln.Addr().String() + "/any/path"
	a := dial(t, url)
	b := dial(t, url)
	if got, want := roundTrip(t, a, `{"jsonrpc":"2.0","id":1,"method":"echo"}`), `{"jsonrpc":"2.0","id":1,"result":null}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	// b has a sleep in flight: shutdown must end it and write nothing for it.
	send(t, b, `{"jsonrpc":"2.0","id":1,"method":"sleep","params":{"ms":3600000}}`)
	if got, want := roundTrip(t, b, `{"jsonrpc":"2.0","id":2,"method":"echo"}`), `{"jsonrpc":"2.0","id":2,"result":null}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}

	cancel()
	for name, c := range map[string]*websocket.Conn{"a": a, "b": b} {
		if got := readClose(t, c); got != websocket.StatusGoingAway {
			t.Errorf("client %s: close status %v, want %v", name, got, websocket.StatusGoingAway)
		}
	}
	select {
	case <-served:
		if serveErr != nil {
			t.Errorf("Serve = %v, want nil", serveErr)
		}
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return after its context ended")
	}

	// The listener is closed.
	dctx, dcancel := context.WithTimeout(context.Background(), ioTimeout)
	defer dcancel()
	if c, _, err := websocket.Dial(dctx, url, nil); err == nil {
		_ = c.CloseNow()
		t.Error("dial succeeded after Serve returned")
	}
}

func TestServeReturnsListenerError(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_ = ln.Close() // Serve's Accept fails at once
	s := New(Options{})
	if err := s.Serve(context.Background(), ln); err == nil || errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve = %v, want the listener's error", err)
	}
}

func TestShutdownRefusesNewConnections(t *testing.T) {
	t.Parallel()
	s, url := startServer(t, Options{})
	c := dial(t, url)
	if got, want := roundTrip(t, c, `{"jsonrpc":"2.0","id":1,"method":"echo"}`), `{"jsonrpc":"2.0","id":1,"result":null}`; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}

	// Shutdown waits for the close handshake, which needs the client to
	// read, so it runs alongside.
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	if got := readClose(t, c); got != websocket.StatusGoingAway {
		t.Errorf("close status %v, want %v", got, websocket.StatusGoingAway)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	c2, resp, err := websocket.Dial(ctx, url, nil)
	if err == nil {
		_ = c2.CloseNow()
		t.Fatal("dial succeeded after Shutdown")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after Shutdown: %v, response %v; want status 503", err, resp)
	}
}

// fuzzSeeds are the transcript's frames plus a few shapes it lacks.
func fuzzSeeds() []string {
	seeds := []string{
		`[{"jsonrpc":"2.0","method":"sleep","params":[5]},{"jsonrpc":"2.0","id":1,"method":"sleep","params":{"ms":5}}]`,
		`{"jsonrpc":"2.0","id":1,"method":"add","params":[1e999,-1e999]}`,
		`{"jsonrpc":"2.0","id":1,"method":"add","params":[-0,0.0]}`,
		`{"jsonrpc":"2.0","id":1,"id":2,"method":"echo","method":"counter"}`,
		`{"jsonrpc":"2.0","id":"\ud800","method":"fail","params":{"message":"\udfff","code":-9223372036854775808}}`,
		"\xff{}",
		`[[[[[[]]]]]]`,
	}
	for _, tc := range transcript {
		seeds = append(seeds, tc.send)
	}
	return seeds
}

// FuzzServeMessage feeds arbitrary frames to the decoder and checks that it
// never panics and that whatever it answers is a well-formed JSON-RPC reply.
func FuzzServeMessage(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add([]byte(seed))
	}
	s := New(Options{})
	// A fuzzed sleep could ask for years.
	s.sleep = func(context.Context, time.Duration) error { return nil }
	f.Fuzz(func(t *testing.T, frame []byte) {
		reply := s.handleMessage(context.Background(), frame)
		if reply == nil {
			if !json.Valid(frame) {
				t.Fatalf("no reply to invalid JSON %q", frame)
			}
			return
		}
		if !json.Valid(reply) {
			t.Fatalf("--> %q\n<-- invalid JSON %q", frame, reply)
		}
		if reply[0] != '[' {
			checkReply(t, frame, reply)
			return
		}
		var replies []json.RawMessage
		if err := json.Unmarshal(reply, &replies); err != nil || len(replies) == 0 {
			t.Fatalf("--> %q\n<-- bad batch reply %q (%v)", frame, reply, err)
		}
		for _, r := range replies {
			checkReply(t, frame, r)
		}
	})
}

// checkReply checks the shape of one JSON-RPC response object.
func checkReply(t *testing.T, frame, reply []byte) {
	t.Helper()
	var r map[string]json.RawMessage
	if err := json.Unmarshal(reply, &r); err != nil {
		t.Fatalf("--> %q\n<-- not an object %q", frame, reply)
	}
	_, hasResult := r["result"]
	e, hasError := r["error"]
	_, hasID := r["id"]
	if string(r["jsonrpc"]) != `"2.0"` || !hasID || hasResult == hasError {
		t.Fatalf("--> %q\n<-- malformed response %q", frame, reply)
	}
	if hasError {
		var obj struct {
			Code    *int64  `json:"code"`
			Message *string `json:"message"`
		}
		if err := json.Unmarshal(e, &obj); err != nil || obj.Code == nil || obj.Message == nil {
			t.Fatalf("--> %q\n<-- malformed error %q (%v)", frame, reply, err)
		}
	}
}

func TestDemoSubscriptions(t *testing.T) {
	_, url := startServer(t, Options{})
	c := dial(t, url)
	got := roundTrip(t, c, `{"jsonrpc":"2.0","id":1,"method":"demo_subscribe","params":[5]}`)
	if got != `{"jsonrpc":"2.0","id":1,"result":"0x1"}` {
		t.Fatalf("subscribe reply %s (it must come before any notification)", got)
	}
	for seq := 1; seq <= 2; seq++ {
		want := fmt.Sprintf(`{"jsonrpc":"2.0","method":"demo_subscription","params":{"subscription":"0x1","result":{"seq":%d}}}`, seq)
		if got := recv(t, c); got != want {
			t.Fatalf("notification %s, want %s", got, want)
		}
	}
	send(t, c, `{"jsonrpc":"2.0","id":2,"method":"demo_unsubscribe","params":["0x1"]}`)
	for {
		got := recv(t, c) // notifications already queued may come first
		if strings.Contains(got, `"id":2`) {
			if got != `{"jsonrpc":"2.0","id":2,"result":true}` {
				t.Fatalf("unsubscribe reply %s", got)
			}
			break
		}
	}
	if got := roundTrip(t, c, `{"jsonrpc":"2.0","id":3,"method":"demo_unsubscribe","params":["0x1"]}`); got != `{"jsonrpc":"2.0","id":3,"result":false}` {
		t.Fatalf("second unsubscribe %s", got)
	}
	if got := roundTrip(t, c, `{"jsonrpc":"2.0","id":4,"method":"demo_subscribe","params":{"interval_ms":0}}`); !strings.Contains(got, "-32602") {
		t.Fatalf("zero interval: %s", got)
	}
}
