package queue

import (
	"sync"
	"testing"
)

func TestQueue(t *testing.T) {
	q := New[int](3)
	for i := range 3 {
		if !q.Push(i) {
			t.Fatalf("push %d refused", i)
		}
	}
	if q.Push(3) {
		t.Fatal("push past the limit accepted")
	}
	select {
	case <-q.Ready():
	default:
		t.Fatal("not signalled")
	}
	got := q.Take(nil)
	if len(got) != 3 || got[0] != 0 || got[2] != 2 || q.Len() != 0 {
		t.Fatalf("took %v", got)
	}
	if len(q.Take(got)) != 0 {
		t.Fatal("empty take")
	}
}

func TestQueueConcurrent(t *testing.T) {
	q := New[int](0)
	var wg sync.WaitGroup
	for p := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				q.Push(p*1000 + i)
			}
		})
	}
	seen := map[int]bool{}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var batch []int
	for len(seen) < 8000 {
		select {
		case <-q.Ready():
		case <-done:
		}
		batch = q.Take(batch)
		for _, v := range batch {
			if seen[v] {
				t.Fatalf("%d twice", v)
			}
			seen[v] = true
		}
	}
}

func TestSizedQueue(t *testing.T) {
	q := NewSized(0, 10, func(b []byte) int { return len(b) })
	if !q.Push(make([]byte, 25)) {
		t.Fatal("an item over the byte limit refused by an empty queue")
	}
	if q.Push([]byte("x")) {
		t.Fatal("push past the byte limit accepted")
	}
	q.Take(nil)
	for range 2 {
		if !q.Push(make([]byte, 5)) {
			t.Fatal("push within the byte limit refused")
		}
	}
	if q.Push([]byte("x")) {
		t.Fatal("push past the byte limit accepted")
	}
	if got := q.Take(nil); len(got) != 2 || !q.Push(make([]byte, 10)) {
		t.Fatalf("took %d; the bytes were not given back", len(got))
	}
}
