// Package invariants checks, after a fault or load test, the four
// invariants of the reliability catalogue:
//
//	I1 every call ends exactly once, by its deadline (plus a slack);
//	I2 no reply reaches the wrong caller (each call carries a nonce that
//	   the backend echoes);
//	I3 the pending table is empty and goroutines are back to baseline;
//	I4 never more backend connections than configured.
package invariants

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsbridge/wsbridge/bridge"
)

// Calls records calls for I1 and I2. Start a call with Start, and end it
// exactly once with End.
type Calls struct {
	next atomic.Int64

	mu    sync.Mutex
	calls map[int64]*call // guarded by mu

	ended, twice, late, misdelivered atomic.Int64
}

type call struct {
	nonce    string
	deadline time.Time
	ends     int
}

// Call is one recorded call.
type Call struct {
	c     *Calls
	id    int64
	Nonce string // put it in the request; the backend echoes it
}

// Start records a call that must end by deadline.
func (c *Calls) Start(deadline time.Time) Call {
	id := c.next.Add(1)
	nonce := fmt.Sprintf("nonce-%d-%d", id, time.Now().UnixNano())
	c.mu.Lock()
	if c.calls == nil {
		c.calls = map[int64]*call{}
	}
	c.calls[id] = &call{nonce: nonce, deadline: deadline}
	c.mu.Unlock()
	return Call{c: c, id: id, Nonce: nonce}
}

// End records the outcome: with ok, reply is checked for the call's nonce.
func (k Call) End(ok bool, reply string, slack time.Duration) {
	c := k.c
	c.mu.Lock()
	rec := c.calls[k.id]
	rec.ends++
	ends := rec.ends
	c.mu.Unlock()
	c.ended.Add(1)
	if ends > 1 {
		c.twice.Add(1)
	}
	if time.Now().After(rec.deadline.Add(slack)) {
		c.late.Add(1)
	}
	if ok && !contains(reply, rec.nonce) {
		c.misdelivered.Add(1)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// Check fails t unless every started call ended exactly once, in time (I1),
// and none got another caller's reply (I2).
func (c *Calls) Check(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	started := len(c.calls)
	open := 0
	for _, rec := range c.calls {
		if rec.ends == 0 {
			open++
		}
	}
	c.mu.Unlock()
	if open != 0 || c.twice.Load() != 0 || c.late.Load() != 0 {
		t.Errorf("I1: %d calls started, %d never ended, %d ended twice, %d ended after their deadline", started, open, c.twice.Load(), c.late.Load())
	}
	if n := c.misdelivered.Load(); n != 0 {
		t.Errorf("I2: %d replies reached the wrong caller", n)
	}
}

// Drained fails t unless the Bridge's pending table empties and nothing is
// in flight within 2 s (I3, first half).
func Drained(t testing.TB, b *bridge.Bridge) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		st := b.Stats()
		if st.Pending == 0 && st.InFlight == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("I3: %d pending, %d in flight after the test", st.Pending, st.InFlight)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Goroutines arranges for t to fail unless, once every cleanup registered
// after it has run, the goroutines are those that were running when it was
// called (I3, second half). Call it first in a test.
func Goroutines(t *testing.T, ignore ...goleak.Option) {
	t.Helper()
	opts := append([]goleak.Option{goleak.IgnoreCurrent()}, ignore...)
	t.Cleanup(func() {
		if err := goleak.Find(opts...); err != nil {
			t.Errorf("I3: goroutines not back to baseline: %v", err)
		}
	})
}

// MaxConns fails t if more than limit backend connections were open at
// once (I4).
func MaxConns(t testing.TB, maxLive int64, limit int) {
	t.Helper()
	if maxLive > int64(limit) {
		t.Errorf("I4: %d backend connections at once, configured %d", maxLive, limit)
	}
}
