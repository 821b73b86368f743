package bridge

import (
	"encoding/json"
	"sync"
	"sync/atomic"
)

// op is one call (or notification) on one connection attempt.
type op struct {
	id     uint64
	notify bool
	frame  []byte
	// state moves queued -> written (by the writer) or queued -> abandoned
	// (by the caller giving up, or by teardown). Whoever wins the CAS decides
	// whether the backend can have seen the request.
	state atomic.Uint32
	// resp receives the outcome exactly once: from whoever removed the op
	// from the pending table.
	resp chan result
	// onResult, if set, runs on the reader with a successful result.
	onResult resultHook
}

const (
	opQueued uint32 = iota
	opWritten
	opAbandoned
)

type result struct {
	value json.RawMessage
	err   error
}

func newOp(id uint64, notify bool, frame []byte) *op {
	return &op{id: id, notify: notify, frame: frame, resp: make(chan result, 1)}
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
	_      [40]byte       // keep shards on separate cache lines
}

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

// takeCall is take for a reply: it leaves notifications alone, since their
// ids were never sent and so cannot be answered.
func (t *pendingTable) takeCall(id uint64) *op {
	s := t.shard(id)
	s.mu.Lock()
	o, ok := s.ops[id]
	if ok && !o.notify {
		delete(s.ops, id)
	} else {
		o = nil
	}
	s.mu.Unlock()
	if o != nil {
		t.size.Add(-1)
	}
	return o
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

// abandonedSet remembers calls whose callers gave up after the request was
// written, so that their replies count as late rather than unknown, and so
// that a late reply can still run the call's result hook. It is bounded:
// past maxAbandoned entries, late replies count as unknown.
type abandonedSet struct {
	mu  sync.Mutex
	ids map[uint64]resultHook // guarded by mu
}

const maxAbandoned = 1 << 16

func (a *abandonedSet) add(id uint64, hook resultHook) {
	a.mu.Lock()
	if a.ids == nil {
		a.ids = make(map[uint64]resultHook)
	}
	if len(a.ids) < maxAbandoned {
		a.ids[id] = hook
	}
	a.mu.Unlock()
}

// take reports whether id was abandoned, with its hook.
func (a *abandonedSet) take(id uint64) (resultHook, bool) {
	a.mu.Lock()
	hook, ok := a.ids[id]
	delete(a.ids, id)
	a.mu.Unlock()
	return hook, ok
}
