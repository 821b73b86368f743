package bridge

import (
	"encoding/json"
	"sync"
	"sync/atomic"
)

// op is one request on one connection: an entry of the pending table.
type op struct {
	id     uint64
	notify bool
	frame  []byte
	// state moves queued -> written (by the writer) or queued -> abandoned
	// (by the caller giving up, or by teardown). Whoever wins the CAS decides
	// whether the backend can have seen the request.
	state atomic.Uint32
	// owner receives the outcome exactly once, from whoever removed the op
	// from the pending table; see complete. Nil for a request nobody waits
	// for (a cancel notification).
	owner opOwner
	// onResult, if set, runs on the reader with a successful result.
	onResult resultHook
	// batch holds the ids of the requests written with o in one JSON-RPC
	// batch (Options.Batch), whose replies come in one message; nil for a
	// request written alone. Set by the writer, read by the reader.
	batch atomic.Pointer[[]uint64]
	// sentAt is when the writer wrote o (unix nanoseconds), for the
	// backend's latency: set by the writer, read by the reader after the
	// reply (atomic: the network orders them, the memory model does not).
	sentAt atomic.Int64
}

// opOwner is what waits for an op's outcome (an attempt).
type opOwner interface{ opEnded(result) }

const (
	opQueued uint32 = iota
	opWritten
	opAbandoned
)

type result struct {
	value json.RawMessage
	err   error
}

// complete hands o its outcome. Only the goroutine that removed o from the
// pending table (or never added it) may call it, so it runs once.
func (o *op) complete(r result) {
	if o.owner != nil {
		o.owner.opEnded(r)
	}
}

// pendingShards spreads the pending table over several locks so that callers
// registering and the reader routing replies rarely contend.
const pendingShards = 32

// pendingTable maps request ids to ops on one connection. Removing an op is
// the right to deliver its result; every op is removed exactly once.
type pendingTable struct {
	shards [pendingShards]pendingShard
	size   atomic.Int64
}

type pendingShard struct {
	mu     sync.Mutex
	ops    map[uint64]*op // guarded by mu
	closed bool           // guarded by mu; set once by takeAll
	// late remembers calls abandoned after their request was written, so
	// that a reply still to come counts as late (not unknown) and can still
	// run the call's result hook. Guarded by mu; bounded by maxLatePerShard.
	late map[uint64]resultHook
	_    [32]byte // keep shards on separate cache lines
}

// maxLatePerShard bounds the late set; past it, the set starts over and
// the oldest abandoned calls' replies count as unknown.
const maxLatePerShard = 2048

func (t *pendingTable) shard(id uint64) *pendingShard { return &t.shards[id%pendingShards] }

// add registers o. It returns false when the table was closed by takeAll.
func (t *pendingTable) add(o *op) bool {
	s := t.shard(o.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.ops == nil {
		s.ops = make(map[uint64]*op)
	}
	s.ops[o.id] = o
	t.size.Add(1)
	return true
}

// take removes and returns the op with id, or nil.
func (t *pendingTable) take(id uint64) *op {
	s := t.shard(id)
	s.mu.Lock()
	o, ok := s.ops[id]
	if ok {
		delete(s.ops, id)
	}
	s.mu.Unlock()
	if ok {
		t.size.Add(-1)
	}
	return o
}

// takeReply removes the call (not a notification: those have no reply)
// with id. When there is none, it reports whether id was abandoned after
// being written, with the call's result hook.
func (t *pendingTable) takeReply(id uint64) (o *op, hook resultHook, late bool) {
	s := t.shard(id)
	s.mu.Lock()
	o, ok := s.ops[id]
	if ok && !o.notify {
		delete(s.ops, id)
	} else {
		o = nil
		hook, late = s.late[id]
		delete(s.late, id)
	}
	s.mu.Unlock()
	if o != nil {
		t.size.Add(-1)
	}
	return o, hook, late
}

// abandon removes o for a caller that gave up. It returns false when o was
// already removed (its outcome is being delivered). If the request was
// written, a reply may still come: it is remembered as late.
func (t *pendingTable) abandon(o *op) bool {
	s := t.shard(o.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ops[o.id] != o {
		return false
	}
	delete(s.ops, o.id)
	t.size.Add(-1)
	if !o.state.CompareAndSwap(opQueued, opAbandoned) && !o.notify {
		if s.late == nil || len(s.late) >= maxLatePerShard {
			s.late = make(map[uint64]resultHook)
		}
		s.late[o.id] = o.onResult
	}
	return true
}

// takeAll closes the table and returns every op still in it.
func (t *pendingTable) takeAll() []*op {
	var all []*op
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		s.closed = true
		for id, o := range s.ops {
			all = append(all, o)
			delete(s.ops, id)
		}
		s.mu.Unlock()
	}
	t.size.Add(-int64(len(all)))
	return all
}
