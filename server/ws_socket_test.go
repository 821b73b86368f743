package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
	"github.com/wsbridge/wsbridge/internal/cork"
)

// maskedFrame is a client frame of opcode op, masked with a zero key
// (which leaves the payload as it is), built up front so that a flooding
// goroutine can write it without the test's helpers.
func maskedFrame(op byte, payload []byte) []byte {
	f := []byte{0x80 | op}
	if n := len(payload); n < 126 {
		f = append(f, 0x80|byte(n))
	} else {
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	}
	f = append(f, 0, 0, 0, 0)
	return append(f, payload...)
}

// A client that floods pings and never reads its pongs fills its socket,
// while replies to its calls arrive. Replies are written by the backend's
// reader when a client's socket looks idle: they must never wait on that
// socket. Every other client's calls are answered within the call timeout
// throughout, and the flooder is closed.
func TestWSPingFloodWithoutReadingStallsNoOne(t *testing.T) {
	h := start(t, demoBackend(t), func(o *Options) {
		o.Bridge.CallTimeout = time.Second // below the stall a blocking write would cause
		o.ClientWriteTimeout = 2 * time.Second
		// When both sockets' buffers are full the flooder can send no more
		// pings either; then its unanswered pings end it.
		o.ClientPingInterval = 200 * time.Millisecond
	})
	fine := dialWS(t, h)
	fine.roundTrip(`{"jsonrpc":"2.0","id":0,"method":"echo"}`)

	flooder := dialRaw(t, h)
	_ = flooder.c.SetDeadline(time.Time{})
	_ = flooder.c.(*net.TCPConn).SetReadBuffer(4096)
	// A call whose reply arrives once the pongs have filled the socket; it
	// is the client's only call, so its reply is written directly.
	if _, err := flooder.c.Write(maskedFrame(0x1, []byte(`{"jsonrpc":"2.0","id":1,"method":"sleep","params":[300]}`))); err != nil {
		t.Fatal(err)
	}
	go func() {
		ping := maskedFrame(0x9, []byte(strings.Repeat("p", 125)))
		for {
			if _, err := flooder.c.Write(ping); err != nil {
				return // the gateway closed it
			}
		}
	}()
	// The other client calls throughout, until the flooder is gone.
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		want := `{"jsonrpc":"2.0","id":1,"result":[` + strconv.Itoa(i) + `]}`
		if got := fine.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"echo","params":[` + strconv.Itoa(i) + `]}`); got != want {
			t.Fatalf("call %d of the other client during the flood: %s", i, got)
		}
		if st, _ := h.stats.GetStats(ctxT(t), nil); st.WsClients == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the flooder is still connected")
		}
	}
	if got := fine.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"echo","params":["after"]}`); got != `{"jsonrpc":"2.0","id":2,"result":["after"]}` {
		t.Fatalf("after the flood: %s", got)
	}
}

// A client may send its first frame right behind the upgrade request, in
// the same packet, before it has read the 101. The gateway hands
// coder/websocket its own small reader (see hijackRecorder), which must
// keep those bytes.
func TestWSFrameRightBehindTheHandshake(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	c, err := net.Dial("tcp", h.srv.HTTPAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	call := `{"jsonrpc":"2.0","id":7,"method":"echo","params":["` + strings.Repeat("x", 300) + `"]}`
	req := "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := c.Write(append([]byte(req), maskedFrame(0x1, []byte(call))...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil {
		t.Fatal(err)
	}
	n := int(hdr[1] & 0x7f)
	if n == 126 {
		ext := make([]byte, 2)
		if _, err := io.ReadFull(br, ext); err != nil {
			t.Fatal(err)
		}
		n = int(ext[0])<<8 | int(ext[1])
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(br, payload); err != nil {
		t.Fatal(err)
	}
	want := `{"jsonrpc":"2.0","id":7,"result":["` + strings.Repeat("x", 300) + `"]}`
	if hdr[0] != 0x81 || string(payload) != want {
		t.Fatalf("reply: opcode %#x, %q", hdr[0], payload)
	}
}

// Over TLS the socket's non-blocking writes sit under the TLS records;
// replies of every size, from one at a time to large pipelined bursts,
// arrive whole and in order.
func TestWSOverTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	h := startTLS(t, demoBackend(t), &tls.Config{Certificates: []tls.Certificate{cert}})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	conn, _, err := websocket.Dial(ctxT(t), "wss://"+h.srv.HTTPAddr().String()+"/ws", &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(-1)
	c := &wsTestClient{t: t, conn: conn}
	for i, size := range []int{1, 100, 5000, 70000, 300000} {
		p := strings.Repeat("y", size)
		want := `{"jsonrpc":"2.0","id":` + strconv.Itoa(i) + `,"result":["` + p + `"]}`
		if got := c.roundTrip(`{"jsonrpc":"2.0","id":` + strconv.Itoa(i) + `,"method":"echo","params":["` + p + `"]}`); got != want {
			t.Fatalf("%d bytes: got %d bytes back", size, len(got))
		}
	}
	const n = 200
	for i := range n {
		c.send(`{"jsonrpc":"2.0","id":` + strconv.Itoa(i) + `,"method":"echo","params":["` + strings.Repeat("z", 2000) + `"]}`)
	}
	seen := map[string]bool{}
	for range n {
		got := c.recv()
		if !strings.HasSuffix(got, `,"result":["`+strings.Repeat("z", 2000)+`"]}`) {
			t.Fatalf("pipelined reply: %.80s", got)
		}
		seen[strings.SplitN(got, ",", 3)[1]] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct replies for %d calls", len(seen), n)
	}
}

// noRawListener hands out connections that are not syscall.Conns: every
// non-blocking write is held, as on a socket that is always full, so that
// every frame goes through the held-bytes path.
type noRawListener struct{ net.Listener }

func (l noRawListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return struct{ net.Conn }{c}, nil
}

// At shutdown a client gets its last reply and then 1001, even when every
// byte has to wait for a writer (the reply, then the close frame written
// by the close handshake after the writer that sent the reply has ended).
func TestWSGoingAwayWhenEveryByteIsHeld(t *testing.T) {
	srv, err := New(Options{GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Bridge: bridge.Options{URL: demoBackend(t)}, ConnDrain: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv.httpLn = cork.Listener{Listener: noRawListener{srv.httpLn.(cork.Listener).Listener}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()

	conn, _, err := websocket.Dial(ctxT(t), "ws://"+srv.HTTPAddr().String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	if err := conn.Write(ctxT(t), websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":1,"method":"sleep","params":[300]}`)); err != nil {
		t.Fatal(err)
	}
	bridgetest.Eventually(t, "the call in flight", func() bool { return srv.Bridge().Stats().Pending == 1 })
	cancel() // shutdown: the client gets 1001 once its call is answered
	_, data, err := conn.Read(ctxT(t))
	if err != nil || string(data) != `{"jsonrpc":"2.0","id":1,"result":{"slept_ms":300}}` {
		t.Fatalf("reply: %s %v", data, err)
	}
	if _, _, err = conn.Read(ctxT(t)); websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("after the reply: %v, want close 1001", err)
	}
}

// The gateway ends clients (shutdown's kill, a revoked token, a slow
// consumer) while they send: the close handshake, which reads the socket,
// never runs beside the reader's own look at its buffer (run with -race).
func TestWSEndWhileTheClientSends(t *testing.T) {
	h := start(t, demoBackend(t), nil)
	for range 5 {
		raw := dialRaw(t, h)
		_ = raw.c.SetDeadline(time.Time{})
		stop := make(chan struct{})
		go func(c net.Conn) {
			f := maskedFrame(0x1, []byte(`{"jsonrpc":"2.0","method":"echo","params":[1]}`))
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write(f); err != nil {
					return
				}
			}
		}(raw.c)
		gone := make(chan struct{})
		go func(c net.Conn) { // reads what comes, so that the close handshake can complete
			defer close(gone)
			b := make([]byte, 4096)
			for {
				if _, err := c.Read(b); err != nil {
					return
				}
			}
		}(raw.c)
		var kills []func()
		bridgetest.Eventually(t, "the client's session", func() bool {
			h.srv.sessMu.Lock()
			defer h.srv.sessMu.Unlock()
			kills = kills[:0]
			for _, k := range h.srv.sessions {
				kills = append(kills, k)
			}
			return len(kills) == 1
		})
		for _, k := range kills {
			k()
		}
		select {
		case <-gone:
		case <-time.After(10 * time.Second):
			t.Fatal("the ended client's connection stays open")
		}
		close(stop)
		raw.c.Close()
		bridgetest.Eventually(t, "the client gone", func() bool {
			h.srv.sessMu.Lock()
			defer h.srv.sessMu.Unlock()
			return len(h.srv.sessions) == 0
		})
	}
}
