package cork

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair is a loopback TCP connection: the local side wrapped in a Conn,
// the peer plain. Non-blocking writes need a real socket.
func tcpPair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	local, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { local.Close(); peer.Close() })
	return Wrap(local), peer
}

// within fails the test when f has not returned in a generous time: f
// must not wait for the peer.
func within(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s waited for a peer that does not read", what)
	}
}

// A peer that does not read never makes a non-blocking write wait: the
// bytes the socket cannot take are held, the owner is told once, writes
// made outside a batch are bounded, and Flush gives up at its deadline.
func TestNonBlockingNeverWaitsForThePeer(t *testing.T) {
	c, _ := tcpPair(t) // the peer never reads
	var told atomic.Int32
	c.NonBlocking(func() { told.Add(1) })
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	var held bool
	within(t, "a corked batch", func() {
		// Far more than any socket buffer: a blocking write would hang.
		for range 64 {
			c.Cork()
			if _, err := c.Write(chunk); err != nil {
				t.Error(err)
				return
			}
			var err error
			if held, err = c.Uncork(time.Time{}); err != nil {
				t.Error(err)
				return
			}
		}
	})
	if !held || !c.Held() {
		t.Fatal("4 MiB to a peer that does not read, and nothing held")
	}
	if told.Load() != 0 {
		t.Fatalf("the owner's own batches told it %d times; Uncork says it", told.Load())
	}
	// Control frames written meanwhile (pongs) queue behind, up to a bound.
	var err error
	within(t, "writes outside a batch", func() {
		for range 2 * controlSlack / 100 {
			if _, err = c.Write(make([]byte, 100)); err != nil {
				return
			}
		}
	})
	if !errors.Is(err, ErrTooSlow) {
		t.Fatalf("unbounded writes outside a batch: %v", err)
	}
	if err := c.Flush(time.Now().Add(50 * time.Millisecond)); err == nil {
		t.Fatal("Flush to a peer that does not read succeeded")
	}
}

// Held bytes reach the peer in order, with writes made during the Flush
// behind them, and the owner is told when a write outside a batch leaves
// bytes held.
func TestNonBlockingFlushKeepsOrder(t *testing.T) {
	c, peer := tcpPair(t)
	told := make(chan struct{}, 1)
	c.NonBlocking(func() {
		select {
		case told <- struct{}{}:
		default:
		}
	})
	var want bytes.Buffer
	c.Cork()
	for i := range 256 {
		p := bytes.Repeat([]byte{byte(i)}, 32<<10)
		want.Write(p)
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	held, err := c.Uncork(time.Time{})
	if err != nil || !held {
		t.Fatalf("8 MiB uncorked at once: held %v, %v", held, err)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	flushed := make(chan error, 1)
	go func() { flushed <- c.Flush(time.Now().Add(10 * time.Second)) }()
	if _, err := c.Write([]byte("tail")); err != nil {
		t.Fatal(err)
	}
	want.WriteString("tail")
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if c.Held() { // "tail" came after the Flush had finished
		<-told
		if err := c.Flush(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	c.Conn.Close()
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("peer got %d bytes, want %d in order", len(b), want.Len())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held != nil {
		t.Fatal("a flushed Conn keeps its buffer")
	}
}

// A lazily reading Conn holds no buffer while it waits, returns every byte
// in order through small reads, and gives the buffer back once consumed.
func TestReadLazily(t *testing.T) {
	c, peer := tcpPair(t)
	c.ReadLazily()
	waited := make(chan error, 1)
	go func() { waited <- c.WaitReadable() }()
	msg := bytes.Repeat([]byte("0123456789"), 1000)
	if _, err := peer.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	var got []byte
	p := make([]byte, 16)
	for len(got) < len(msg) {
		n, err := c.Read(p)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, p[:n]...)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("bytes lost or reordered")
	}
	if c.rpool != nil || c.rbuf != nil {
		t.Fatal("a drained Conn keeps its read buffer")
	}
	peer.Close()
	if err := c.WaitReadable(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(p); err != io.EOF {
		t.Fatalf("after the peer closed: %v, want EOF", err)
	}
}
