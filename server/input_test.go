package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsbridge/wsbridge/backend"
	"github.com/wsbridge/wsbridge/backend/backendtest"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	wsbridgev1 "github.com/wsbridge/wsbridge/gen/wsbridge/v1"
)

// endlessString is `["xxxx...`: a JSON string that a decoder would keep
// reading.
func endlessString(n int64) io.Reader {
	return io.LimitReader(io.MultiReader(strings.NewReader(`["`), xs{}), n)
}

type xs struct{}

func (xs) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

// Scenario 20: oversize input is refused before it is decoded, on every
// face, and memory stays bounded.
func TestScenario20OversizeInput(t *testing.T) {
	url, be := backendtest.Start(t, backend.Options{})
	h := start(t, url, func(o *Options) { o.Bridge.MaxMessageBytes = 1 << 20 })

	// A WebSocket frame over the limit: close 1009.
	c := dialWS(t, h)
	c.send(`{"jsonrpc":"2.0","id":1,"method":"echo","params":["` + strings.Repeat("x", 2<<20) + `"]}`)
	if code := c.recvClose(); code != websocket.StatusMessageTooBig {
		t.Fatalf("oversize frame: close %v, want 1009", code)
	}

	// 256 MiB REST and /rpc bodies, with and without Content-Length: 413,
	// without the server buffering them.
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, path := range []string{"/v1/call/echo", "/rpc"} {
		for _, withLength := range []bool{true, false} {
			body := endlessString(256 << 20)
			req, _ := http.NewRequest(http.MethodPost, h.base+path, body)
			req.Header.Set("Content-Type", "application/json")
			if withLength {
				req.ContentLength = 256 << 20
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				continue // the server may close before the client has sent it all
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Errorf("%s (length %v): HTTP %d, want 413", path, withLength, resp.StatusCode)
			}
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapInuse) - int64(before.HeapInuse); grew > 2<<20 {
		t.Errorf("heap grew %d bytes for 1 MiB limits", grew)
	}

	// gRPC over the limit: RESOURCE_EXHAUSTED.
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "echo", Params: value(t, `["`+strings.Repeat("x", 2<<20)+`"]`)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("oversize gRPC call: %v", err)
	}
	if be.Requests() != 0 {
		t.Fatalf("oversize input reached the backend (%d requests)", be.Requests())
	}
}

// Scenario 21: a 1 MB method name or 100,000 nested brackets are refused,
// without a panic, on every face.
func TestScenario21HugeMethodsAndDeepNesting(t *testing.T) {
	url, be := backendtest.Start(t, backend.Options{})
	h := start(t, url, nil)
	huge := strings.Repeat("m", 1<<20)
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: huge}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("gRPC huge method: %v", err)
	}
	c := dialWS(t, h)
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"` + huge + `"}`); !strings.Contains(got, `"code":-32600`) {
		t.Errorf("/ws huge method: %.200s", got)
	}
	nested := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"echo","params":` + nested + `}`); !strings.Contains(got, `"code":-32700`) {
		t.Errorf("/ws deep nesting: %.200s", got)
	}
	if _, got := rpcPost(t, h, "application/json", nested); !strings.Contains(got, `"code":-32700`) {
		t.Errorf("/rpc deep nesting: %.200s", got)
	}
	if code, _ := httpDo(t, http.MethodPost, h.base+"/v1/call/echo", nested, nil); code != http.StatusBadRequest {
		t.Errorf("REST deep nesting: HTTP %d", code)
	}
	if be.Requests() != 0 {
		t.Fatalf("refused input reached the backend")
	}
	// Still serving.
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":3,"method":"echo","params":[1]}`); got != `{"jsonrpc":"2.0","id":3,"result":[1]}` {
		t.Fatalf("after: %s", got)
	}
}

// Scenario 26: a backend result that is not UTF-8 fails its caller with
// INTERNAL (it could be neither a proto string nor a WebSocket text
// frame); others are unaffected and nothing crashes.
func TestScenario26BackendSendsInvalidUTF8(t *testing.T) {
	fb := bridgetest.NewServer(t, func(ctx context.Context, c *bridgetest.Conn) {
		for {
			r, err := c.Read(ctx)
			if err != nil {
				return
			}
			if r.Method == "bad" {
				_ = c.WriteRaw(ctx, "{\"jsonrpc\":\"2.0\",\"id\":"+string(r.ID)+",\"result\":\"\xff\xfe\"}")
				continue
			}
			_ = c.Reply(ctx, r.ID, "fine")
		}
	})
	h := start(t, fb.URL(), nil)
	if _, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "bad", Timeout: nil}); status.Code(err) != codes.Internal {
		t.Fatalf("gRPC: %v", err)
	}
	c := dialWS(t, h)
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"bad"}`); !strings.Contains(got, `"code":-32603`) {
		t.Fatalf("/ws: %s", got)
	}
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"ok"}`); got != `{"jsonrpc":"2.0","id":2,"result":"fine"}` {
		t.Fatalf("after: %s", got)
	}
	if st := h.srv.Bridge().Stats(); st.Connects != 1 {
		t.Fatalf("the link was dropped")
	}
}

// Scenario 27: backend error data reaches clients only if allowed.
func TestScenario27ErrorDataOnlyIfAllowed(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) { o.Bridge.DropErrorData = true })
	_, err := h.bridge.Call(ctxT(t), &wsbridgev1.CallRequest{Method: "fail", Params: value(t, `{"code":-32000,"message":"m","data":{"secret":1}}`)})
	for _, d := range status.Convert(err).Details() {
		if be, ok := d.(*wsbridgev1.BackendError); ok && be.Data != nil {
			t.Fatalf("gRPC detail carries data: %v", be)
		}
	}
	c := dialWS(t, h)
	if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":-32000,"message":"m","data":{"secret":1}}}`); strings.Contains(got, "secret") {
		t.Fatalf("/ws error carries data: %s", got)
	}
}

// rawWS is a hand-rolled WebSocket client for protocol conformance checks.
type rawWS struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, h *harness) *rawWS {
	t.Helper()
	c, err := net.Dial("tcp", h.srv.HTTPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var key [16]byte
	_, _ = rand.Read(key[:])
	_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "+base64.StdEncoding.EncodeToString(key[:])+"\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawWS{t: t, c: c, br: br}
}

// frame writes one frame; masked as a client must unless masked is false.
func (w *rawWS) frame(fin bool, rsv1 bool, opcode byte, payload []byte, masked bool) {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	if rsv1 {
		b0 |= 0x40
	}
	hdr := []byte{b0}
	var mbit byte
	if masked {
		mbit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, mbit|byte(n))
	default:
		hdr = append(hdr, mbit|126, byte(n>>8), byte(n))
	}
	if masked {
		var key [4]byte
		_, _ = rand.Read(key[:])
		hdr = append(hdr, key[:]...)
		p := make([]byte, len(payload))
		for i := range payload {
			p[i] = payload[i] ^ key[i%4]
		}
		payload = p
	}
	_, _ = w.c.Write(append(hdr, payload...))
}

// read returns the next frame's opcode and payload.
func (w *rawWS) read() (byte, []byte) {
	w.t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return 0, nil
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		_, _ = io.ReadFull(w.br, ext[:])
		n = int(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		_, _ = io.ReadFull(w.br, ext[:])
		n = int(binary.BigEndian.Uint64(ext[:]))
	}
	p := make([]byte, n)
	_, _ = io.ReadFull(w.br, p)
	return h[0] & 0x0f, p
}

func (w *rawWS) expectClose(code uint16) {
	w.t.Helper()
	for {
		op, p := w.read()
		if op == 0 {
			w.t.Fatalf("connection ended without a close frame, want %d", code)
		}
		if op == 0x8 {
			if len(p) < 2 || binary.BigEndian.Uint16(p) != code {
				w.t.Fatalf("close payload %v, want code %d", p, code)
			}
			return
		}
	}
}

// Scenario 23 (Autobahn's fuzzingclient cannot run here: it needs Python
// or Docker, neither of which this environment offers): the RFC 6455
// cases that matter for /ws, by hand.
func TestScenario23WebSocketConformance(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	t.Run("fragmented text message", func(t *testing.T) {
		w := dialRaw(t, h)
		msg := []byte(`{"jsonrpc":"2.0","id":1,"method":"echo","params":["frag"]}`)
		w.frame(false, false, 0x1, msg[:10], true)
		w.frame(true, false, 0x9, []byte("ping-in-between"), true) // a control frame may interleave
		w.frame(true, false, 0x0, msg[10:], true)
		gotPong := false
		for {
			op, p := w.read()
			switch op {
			case 0xA:
				gotPong = string(p) == "ping-in-between"
			case 0x1:
				if string(p) != `{"jsonrpc":"2.0","id":1,"result":["frag"]}` {
					t.Fatalf("reply %s", p)
				}
				if !gotPong {
					t.Fatal("no pong with the ping's payload before the reply")
				}
				return
			default:
				t.Fatalf("unexpected frame %x %q", op, p)
			}
		}
	})
	t.Run("unmasked client frame", func(t *testing.T) {
		w := dialRaw(t, h)
		w.frame(true, false, 0x1, []byte(`{}`), false)
		w.expectClose(1002)
	})
	t.Run("reserved bit without extension", func(t *testing.T) {
		w := dialRaw(t, h)
		w.frame(true, true, 0x1, []byte(`{}`), true)
		w.expectClose(1002)
	})
	t.Run("reserved opcode", func(t *testing.T) {
		w := dialRaw(t, h)
		w.frame(true, false, 0x3, []byte(`{}`), true)
		w.expectClose(1002)
	})
	t.Run("fragmented control frame", func(t *testing.T) {
		w := dialRaw(t, h)
		w.frame(false, false, 0x9, []byte("x"), true)
		w.expectClose(1002)
	})
	t.Run("invalid UTF-8 text", func(t *testing.T) {
		w := dialRaw(t, h)
		w.frame(true, false, 0x1, []byte("{\"x\":\"\xff\"}"), true)
		w.expectClose(1007)
	})
	t.Run("close handshake echoes", func(t *testing.T) {
		w := dialRaw(t, h)
		w.frame(true, false, 0x8, []byte{0x03, 0xe8}, true) // 1000
		w.expectClose(1000)
	})
}
