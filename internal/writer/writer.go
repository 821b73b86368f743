// Package writer is the one writer of a socket that carries WebSocket
// messages from many producers: the backend link's requests, and each /ws
// client's replies and notifications. It owns who writes (the claim),
// corking, flushing and its goroutine, so that their rules hold by
// construction rather than by convention:
//
//   - A producer that finds the socket idle (nothing queued, nobody
//     writing) writes its message itself, corked so that the frame leaves
//     in one system call: at low load a message costs no hand-off to
//     another goroutine and no wake-up.
//   - Messages that meet are queued; a writer goroutine, started on demand
//     and gone once the queue is empty, writes all that is queued at once
//     under one cork, and flushes within the timeout.
//   - The socket never blocks the producer (cork.Conn is non-blocking):
//     what it does not take at once is held, and the writer goroutine
//     flushes it. So any goroutine may write directly, even a socket's
//     reader or a timer, and a peer that does not read stalls none of them.
//   - Only the claim holder corks or writes; the claim is given back by
//     whoever took it, after flushing what it wrote.
package writer

import (
	"context"
	"runtime"
	"sync"
	"time"

	"github.com/wsbridge/wsbridge/internal/cork"
	"github.com/wsbridge/wsbridge/internal/queue"
)

// Options configure a Writer.
type Options[T any] struct {
	// Sock is the socket under the WebSocket, made non-blocking by New.
	// Nil (a TLS connection, an unknown conn): every message is queued and
	// the writer goroutine writes it, bounded by a context timeout.
	Sock *cork.Conn
	// Queue holds the messages waiting for the writer goroutine (its limits
	// are the owner's: a full queue refuses Send).
	Queue *queue.Queue[T]
	// Timeout bounds the flush of one batch by the writer goroutine.
	Timeout time.Duration
	// Done, when closed, ends writing: messages sent later are dropped,
	// the writer goroutine stops taking more, and what the socket holds
	// (a last reply, a close frame) is still flushed within Timeout.
	Done <-chan struct{}
	// Write writes a batch of messages to the WebSocket (one message, for a
	// producer's own write). stop ends writing after it, as if Done had
	// closed (the owner says why: a close behind the last reply). An error
	// goes to Fail.
	Write func(ctx context.Context, batch []T) (stop bool, err error)
	// Written, if set, is called for each message of a batch once the
	// batch has been flushed, on the goroutine that wrote it.
	Written func(v T)
	// Fail is called with a write or flush error: the socket is done for
	// (the owner closes it); writing stops.
	Fail func(err error)
}

// Writer is one socket's writer. See the package doc.
type Writer[T any] struct {
	// Static after New.
	o Options[T]

	mu      sync.Mutex
	stopped bool           // guarded by mu: Stop was called, no writer goroutine starts
	running sync.WaitGroup // the writer goroutine, while one runs (Add under mu)

	// one is the batch of a producer's own write; only the claim holder
	// uses it.
	one [1]T
}

// New returns the writer of o.Sock. It makes the socket non-blocking and
// sets the queue's OnReady: the Writer owns both from now on.
func New[T any](o Options[T]) *Writer[T] {
	w := &Writer[T]{o: o}
	o.Queue.OnReady(w.startWriter)
	if o.Sock != nil {
		o.Sock.NonBlocking(o.Queue.Kick)
	}
	return w
}

// Send writes v, or queues it for the writer goroutine. With direct, a
// producer that finds the socket idle writes v itself; otherwise (the
// producer knows more messages are coming: let them meet) v is queued. It
// reports false when the queue is full. A message sent once writing has
// ended is dropped.
func (w *Writer[T]) Send(v T, direct bool) bool {
	select {
	case <-w.o.Done:
		return true
	default:
	}
	if w.o.Sock == nil || !direct {
		return w.o.Queue.Push(v)
	}
	mine, ok := w.o.Queue.Offer(v)
	if !mine {
		return ok
	}
	w.o.Sock.Cork() // the frame leaves in one system call
	w.one[0] = v
	stop, err := w.o.Write(context.Background(), w.one[:])
	var zero T
	w.one[0] = zero
	held, uerr := w.o.Sock.Uncork(time.Time{})
	if err == nil {
		err = uerr
	}
	switch {
	case err != nil:
		w.o.Fail(err)
		w.o.Queue.Release()
		return true
	case stop:
		w.stopWriting()
		return true
	}
	if held {
		w.o.Queue.Kick() // the writer goroutine flushes the rest
	}
	w.o.Queue.Release()
	if w.o.Written != nil {
		w.o.Written(v) // (what the socket held back is in order, ahead of anything later)
	}
	return true
}

// startWriter starts the writer goroutine (the queue's OnReady: there is
// work and nobody holds the claim) unless Stop was called.
func (w *Writer[T]) startWriter() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.running.Add(1)
		go w.run()
	}
}

// run writes what is queued, all at once under one cork so that it leaves
// in one system call, and waits up to Timeout for the socket to take it;
// it returns when the queue is empty, writing ends, or a write fails.
func (w *Writer[T]) run() {
	defer w.running.Done()
	runtime.Gosched() // let messages about to be queued join this batch
	var batch []T
	var ok bool
	for batch, ok = w.o.Queue.Claim(batch); ok; batch, ok = w.o.Queue.Next(batch) {
		select {
		case <-w.o.Done:
			clear(batch)
			w.stopWriting()
			return
		default:
		}
		ctx, end := cork.Batch(w.o.Sock, context.Background(), w.o.Timeout)
		stop, err := w.o.Write(ctx, batch)
		if err = end(err); err != nil {
			clear(batch)
			w.o.Fail(err)
			w.stopWriting()
			return
		}
		if w.o.Written != nil {
			for _, v := range batch {
				w.o.Written(v)
			}
		}
		clear(batch)
		if stop {
			w.stopWriting()
			return
		}
		runtime.Gosched()
	}
}

// stopWriting ends the claim holder's writing: what the socket holds (a
// last reply, the close frame) still goes, within Timeout; messages still
// queued are dropped; and the claim is given back, so that bytes a close
// handshake leaves held start another writer goroutine.
func (w *Writer[T]) stopWriting() {
	if w.o.Sock != nil {
		_ = w.o.Sock.Flush(time.Now().Add(w.o.Timeout))
	}
	w.o.Queue.Take(nil) // (this clears a kick too: said again below if still due)
	if w.o.Sock != nil && w.o.Sock.Held() {
		w.o.Queue.Kick()
	}
	w.o.Queue.Release()
}

// Stop keeps writer goroutines from starting and waits for the one
// running, if any. Call it once writing has ended (Done is closed) and
// nothing more is to be flushed.
func (w *Writer[T]) Stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.running.Wait()
}
