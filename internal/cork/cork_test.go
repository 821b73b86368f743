package cork

import (
	"io"
	"net"
	"testing"
	"time"
)

// countingConn counts the Write calls that reach the network.
type countingConn struct {
	net.Conn
	writes int
}

func (c *countingConn) Write(p []byte) (int, error) { c.writes++; return c.Conn.Write(p) }

func TestCorkBatchesWrites(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	counted := &countingConn{Conn: a}
	c := Wrap(counted)
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, 12)
		_, _ = io.ReadFull(b, buf)
		got <- buf
	}()
	c.Cork()
	for _, s := range []string{"one ", "two ", "six!"} {
		if _, err := c.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if counted.writes != 0 {
		t.Fatalf("%d writes while corked", counted.writes)
	}
	if _, err := c.Uncork(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if s := string(<-got); s != "one two six!" || counted.writes != 1 {
		t.Fatalf("got %q in %d writes", s, counted.writes)
	}
	// Uncorked: straight through.
	go func() { _, _ = io.ReadFull(b, make([]byte, 3)) }()
	if _, err := c.Write([]byte("now")); err != nil || counted.writes != 2 {
		t.Fatalf("uncorked write: %v, %d writes", err, counted.writes)
	}
}

func TestCorkedWritesPastTheCapGoThrough(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { _, _ = io.Copy(io.Discard, b) }()
	c := Wrap(a)
	c.Cork()
	big := make([]byte, maxBuffer+1)
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	held := len(c.held)
	c.mu.Unlock()
	if held != 0 {
		t.Fatalf("%d bytes held past the cap", held)
	}
	_, _ = c.Uncork(time.Now().Add(time.Second))
}

func TestOf(t *testing.T) {
	a, _ := net.Pipe()
	c := Wrap(a)
	if Of(c) != c || Of(a) != nil {
		t.Fatal("Of")
	}
}
