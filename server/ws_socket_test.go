package server

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
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
