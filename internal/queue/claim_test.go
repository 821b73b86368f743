package queue

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestOfferClaimRelease(t *testing.T) {
	q := New[int](0)
	var woken int
	q.OnReady(func() { woken++ })
	direct, ok := q.Offer(1)
	if !direct || !ok {
		t.Fatal("an idle socket was not offered to the producer")
	}
	// Held: the next ones queue, and nobody is woken (the holder decides).
	for i := 2; i <= 3; i++ {
		if direct, ok := q.Offer(i); direct || !ok {
			t.Fatalf("offer %d while held: direct %v ok %v", i, direct, ok)
		}
	}
	if woken != 0 {
		t.Fatalf("woken %d times while the socket was held", woken)
	}
	q.Release() // the producer wrote its own only: the writer takes over
	if woken != 1 {
		t.Fatalf("woken %d times after the release, want 1", woken)
	}
	if direct, _ := q.Offer(4); direct {
		t.Fatal("direct write past queued items")
	}
	if woken != 1 {
		t.Fatal("woken again before the writer claimed")
	}
	got, ok := q.Claim(nil)
	if !ok || len(got) != 3 || got[0] != 2 || got[2] != 4 {
		t.Fatalf("claim: %v %v", got, ok)
	}
	if _, ok := q.Claim(nil); ok {
		t.Fatal("claimed twice")
	}
	if got, ok := q.Next(got); ok || len(got) != 0 {
		t.Fatalf("next on an empty queue: %v %v", got, ok)
	}
	// Released by Next: a producer writes directly again.
	if direct, _ := q.Offer(5); !direct {
		t.Fatal("not released")
	}
	q.Kick() // held bytes: the writer must flush even with nothing queued
	q.Release()
	if woken != 2 {
		t.Fatalf("a kick did not wake the writer (%d)", woken)
	}
	if got, ok := q.Claim(nil); !ok || len(got) != 0 {
		t.Fatalf("claim after a kick: %v %v", got, ok)
	}
	if _, ok := q.Next(nil); ok {
		t.Fatal("the kick was not cleared")
	}
}

func TestOfferFull(t *testing.T) {
	q := New[int](1)
	q.Offer(0) // direct
	q.Offer(1)
	if _, ok := q.Offer(2); ok {
		t.Fatal("offer past the limit queued")
	}
}

// Many producers and a writer: every item is written exactly once, in
// each producer's order, and never by two goroutines at once.
func TestClaimConcurrent(t *testing.T) {
	q := New[int](0)
	var holders atomic.Int32
	var mu sync.Mutex
	written := map[int]int{} // producer -> last item written
	write := func(v int) {
		if holders.Load() != 1 {
			t.Errorf("%d holders while writing", holders.Load())
		}
		mu.Lock()
		p, i := v/100000, v%100000
		if last, ok := written[p]; ok && i != last+1 {
			t.Errorf("producer %d: item %d after %d", p, i, last)
		}
		written[p] = i
		mu.Unlock()
	}
	wake := make(chan struct{}, 1)
	q.OnReady(func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	stop := make(chan struct{})
	progress := make(chan struct{}, 1)
	var writer sync.WaitGroup
	writer.Go(func() {
		var batch []int
		for {
			select {
			case <-wake:
			case <-stop:
				return
			}
			var ok bool
			for batch, ok = q.Claim(batch); ok; batch, ok = q.Next(batch) {
				holders.Add(1)
				for _, v := range batch {
					write(v)
				}
				holders.Add(-1)
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		}
	})
	var producers sync.WaitGroup
	for p := range 8 {
		producers.Go(func() {
			var mine sync.Mutex // a producer's items in order, as a socket's reader sends them
			for i := range 2000 {
				mine.Lock()
				v := p*100000 + i
				if direct, _ := q.Offer(v); direct {
					holders.Add(1)
					write(v)
					holders.Add(-1)
					q.Release()
				}
				mine.Unlock()
			}
		})
	}
	producers.Wait()
	for {
		mu.Lock()
		n := 0
		for _, last := range written {
			n += last + 1
		}
		mu.Unlock()
		if n == 8*2000 {
			break
		}
		select {
		case <-progress:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d items left queued with nobody to write them", 8*2000-n)
		}
	}
	close(stop)
	writer.Wait()
}
