// Package queue is the hand-off between the goroutines that produce
// messages for a socket and the one goroutine that writes them. Unlike a
// buffered channel it costs memory only for what it holds (an idle client
// stays cheap; a burst needs no capacity set aside), and the writer takes
// everything queued at once, which is what it writes under one cork.
//
// A socket writer can also use it to decide who writes (Offer, Claim,
// Next, Release): at low load a producer finds the socket idle and writes
// its message itself, with no hand-off to the writer goroutine and no
// wake-up; only when messages meet does the writer take over and batch
// them. The queue holds the right to write (the claim) under the same lock
// as the items, so that no item is ever left with nobody to write it.
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

	onReady func() // if set, called instead of signalling ready

	mu    sync.Mutex
	items []T   // guarded by mu
	bytes int64 // guarded by mu: the sizes of items, when sized
	// Guarded by mu: the claim protocol (Offer, Claim, Next, Release).
	claimed  bool // someone holds the right to write to the socket
	kicked   bool // the socket has bytes to flush though nothing is queued
	signaled bool // the writer was told to claim and has not yet
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
	wake := q.wakeLocked()
	q.mu.Unlock()
	q.wake(wake)
	return true
}

// OnReady makes the queue call f instead of signalling Ready, for a writer
// that is started on demand (f starts it). Set it before any Offer.
func (q *Queue[T]) OnReady(f func()) { q.onReady = f }

// Offer is Push for a socket that producers may write to themselves. When
// nothing is queued and nobody holds the socket, Offer claims it and does
// not queue v: direct is true, the caller writes v and then calls Release.
// Otherwise v is queued (ok false when full) for the holder or the writer.
func (q *Queue[T]) Offer(v T) (direct, ok bool) {
	var n int64
	if q.size != nil {
		n = int64(q.size(v))
	}
	q.mu.Lock()
	if !q.claimed && len(q.items) == 0 && !q.kicked {
		q.claimed = true
		q.mu.Unlock()
		return true, true
	}
	if q.limit > 0 && len(q.items) >= q.limit ||
		q.maxBytes > 0 && len(q.items) > 0 && q.bytes+n > q.maxBytes {
		q.mu.Unlock()
		return false, false
	}
	q.items = append(q.items, v)
	q.bytes += n
	wake := q.wakeLocked()
	q.mu.Unlock()
	q.wake(wake)
	return false, true
}

// Kick tells the socket's writer that the socket holds bytes to flush even
// though nothing is queued: the holder's Next (or the writer's Claim) then
// returns with no items.
func (q *Queue[T]) Kick() {
	q.mu.Lock()
	q.kicked = true
	wake := q.wakeLocked()
	q.mu.Unlock()
	q.wake(wake)
}

// Claim is the writer's: when nobody holds the socket and there is work
// (items, or a Kick), it claims the socket and moves the items into dst.
// Else it returns false: the holder's Release will signal again.
func (q *Queue[T]) Claim(dst []T) ([]T, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.signaled = false
	if q.claimed || len(q.items) == 0 && !q.kicked {
		return dst[:0], false
	}
	q.claimed = true
	return q.takeLocked(dst), true
}

// Next is the holder's: it moves what was queued meanwhile into dst and
// keeps the claim, or, when there is nothing (and no Kick), gives the claim
// back and returns false.
func (q *Queue[T]) Next(dst []T) ([]T, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 && !q.kicked {
		q.claimed = false
		return dst[:0], false
	}
	return q.takeLocked(dst), true
}

// Release gives the claim back without taking more; what was queued
// meanwhile (or kicked) is signalled to the writer. A producer that wrote
// its own message calls it: it must not go on writing for others.
func (q *Queue[T]) Release() {
	q.mu.Lock()
	q.claimed = false
	wake := q.wakeLocked()
	q.mu.Unlock()
	q.wake(wake)
}

// wakeLocked reports whether the writer must be told to claim: there is
// work, nobody holds the socket, and it was not told already.
func (q *Queue[T]) wakeLocked() bool {
	if q.claimed || q.signaled || len(q.items) == 0 && !q.kicked {
		return false
	}
	q.signaled = true
	return true
}

func (q *Queue[T]) wake(wake bool) {
	switch {
	case !wake:
	case q.onReady != nil:
		q.onReady()
	default:
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
}

// takeLocked moves the items into dst and clears the kick.
func (q *Queue[T]) takeLocked(dst []T) []T {
	q.kicked = false
	dst = append(dst[:0], q.items...)
	clear(q.items)
	q.bytes = 0
	if cap(q.items) > 32 {
		q.items = nil // a burst is over: give its memory back (idle sockets hold none)
	} else {
		q.items = q.items[:0]
	}
	return dst
}

// Ready is signalled after a Push; the consumer then Takes.
func (q *Queue[T]) Ready() <-chan struct{} { return q.ready }

// Take moves every queued item into dst (reused) and returns it.
func (q *Queue[T]) Take(dst []T) []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.signaled = false
	return q.takeLocked(dst)
}

// Len returns the number of queued items.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}
