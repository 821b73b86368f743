// Package queue is the hand-off between the goroutines that produce
// messages for a socket and the one goroutine that writes them. Unlike a
// buffered channel it costs memory only for what it holds (an idle client
// stays cheap; a burst needs no capacity set aside), and the writer takes
// everything queued at once, which is what it writes under one cork.
package queue

import "sync"

// Queue is a FIFO of T, safe for concurrent use: many producers, one
// consumer.
type Queue[T any] struct {
	// Static after New.
	ready    chan struct{}
	limit    int
	maxBytes int64
	size     func(T) int

	mu    sync.Mutex
	items []T   // guarded by mu
	bytes int64 // guarded by mu: the sizes of items, when sized
}

// New returns a Queue holding at most limit items (0: no limit).
func New[T any](limit int) *Queue[T] {
	return &Queue[T]{ready: make(chan struct{}, 1), limit: limit}
}

// NewSized returns a Queue holding at most limit items and maxBytes bytes
// of them, as size counts them (0: no limit). An item larger than
// maxBytes still fits an empty queue: a limit is no reason to refuse a
// client every message.
func NewSized[T any](limit int, maxBytes int64, size func(T) int) *Queue[T] {
	return &Queue[T]{ready: make(chan struct{}, 1), limit: limit, maxBytes: maxBytes, size: size}
}

// Push appends v; false when the queue is full.
func (q *Queue[T]) Push(v T) bool {
	var n int64
	if q.size != nil {
		n = int64(q.size(v))
	}
	q.mu.Lock()
	if q.limit > 0 && len(q.items) >= q.limit ||
		q.maxBytes > 0 && len(q.items) > 0 && q.bytes+n > q.maxBytes {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, v)
	q.bytes += n
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

// Ready is signalled after a Push; the consumer then Takes.
func (q *Queue[T]) Ready() <-chan struct{} { return q.ready }

// Take moves every queued item into dst (reused) and returns it.
func (q *Queue[T]) Take(dst []T) []T {
	q.mu.Lock()
	dst = append(dst[:0], q.items...)
	clear(q.items)
	q.bytes = 0
	if cap(q.items) > 256 {
		q.items = nil // a burst is over: give its memory back
	} else {
		q.items = q.items[:0]
	}
	q.mu.Unlock()
	return dst
}

// Len returns the number of queued items.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}
