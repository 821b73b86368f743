package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/wsbridge/wsbridge/internal/glob"
)

// MethodPolicy is what the Bridge may do with the calls to the methods
// that match Pattern (package glob: * is any text). When several match a
// method, each field takes its value from the first policy that sets it.
// Subscriptions and notifications never get any of it.
type MethodPolicy struct {
	Pattern string
	// Retry marks the methods that are safe to repeat: a call whose
	// request was written when its connection broke is sent again, once,
	// to another available backend, within its deadline. Other calls get
	// CodeReplyLost. (A call whose request was not written yet is always
	// sent on another connection.)
	Retry bool
	// HedgeAfter, if positive and there are several backends: when the
	// backend has not answered after it, a copy goes to another backend;
	// the first answer wins, and the other call is abandoned (and cancelled
	// at the backend with Options.CancelMethod).
	HedgeAfter time.Duration
	// Dedup makes identical concurrent calls (same method, same params up
	// to white space) one backend request whose reply every caller gets.
	Dedup bool
	// CacheTTL, if positive, keeps a successful reply that long for
	// identical calls (bounded by Options.CacheMaxEntries and
	// CacheMaxBytes).
	CacheTTL time.Duration
}

// policy is the MethodPolicy fields in effect for one method.
type policy struct {
	retry, dedup         bool
	hedgeAfter, cacheTTL time.Duration
}

func (p policy) plain() bool { return p == policy{} }

// policies applies Options.Methods: per-method lookups, in-flight
// deduplication and the reply cache.
type policies struct {
	b *Bridge

	byMethod sync.Map // method -> policy, up to maxQuoted methods
	n        atomic.Int64

	mu      sync.Mutex
	flights map[string]*flight // guarded by mu: deduplicated calls under way

	cacheMu    sync.Mutex
	cache      map[string]*cached // guarded by cacheMu
	order      []string           // guarded by cacheMu: keys in insertion order, for eviction
	cacheBytes int64              // guarded by cacheMu

	coalesced, cacheHits atomic.Uint64
}

func newPolicies(b *Bridge) *policies {
	return &policies{b: b, flights: map[string]*flight{}, cache: map[string]*cached{}}
}

// of returns the policy for method.
func (ps *policies) of(method string) policy {
	if len(ps.b.opts.Methods) == 0 {
		return policy{}
	}
	if p, ok := ps.byMethod.Load(method); ok {
		return p.(policy)
	}
	var p policy
	var retrySet, dedupSet bool
	for _, r := range ps.b.opts.Methods {
		if !glob.Match(r.Pattern, method) {
			continue
		}
		if !retrySet && r.Retry {
			p.retry, retrySet = true, true
		}
		if !dedupSet && r.Dedup {
			p.dedup, dedupSet = true, true
		}
		if p.hedgeAfter == 0 {
			p.hedgeAfter = r.HedgeAfter
		}
		if p.cacheTTL == 0 {
			p.cacheTTL = r.CacheTTL
		}
	}
	if ps.n.Load() < maxQuoted {
		if _, loaded := ps.byMethod.LoadOrStore(method, p); !loaded {
			ps.n.Add(1)
		}
	}
	return p
}

// call makes a call by its policy: from the cache, joined to an identical
// call under way, or sent (retried or hedged by do).
func (ps *policies) call(ctx context.Context, method string, params json.RawMessage, co CallOptions, p policy) (json.RawMessage, error) {
	b := ps.b
	spec := callSpec{slot: -1, retryable: p.retry, hedgeAfter: p.hedgeAfter}
	if !p.dedup && p.cacheTTL == 0 {
		return b.do(ctx, method, params, co, spec)
	}
	key, ok := callKey(method, params)
	if !ok {
		return b.do(ctx, method, params, co, spec) // invalid params: do refuses them
	}
	if p.cacheTTL > 0 {
		if res, ok := ps.cached(key); ok {
			ps.cacheHits.Add(1)
			return res, nil
		}
	}
	var res json.RawMessage
	var err error
	if p.dedup {
		res, err = ps.joinOrStart(ctx, key, func(ctx context.Context) (json.RawMessage, error) {
			return b.do(ctx, method, params, co, spec)
		})
	} else {
		res, err = b.do(ctx, method, params, co, spec)
	}
	if err == nil && p.cacheTTL > 0 {
		ps.store(key, res, p.cacheTTL)
	}
	return res, err
}

// callKey is a call's identity for deduplication and the cache: the
// method and the params without insignificant white space.
func callKey(method string, params json.RawMessage) (string, bool) {
	var buf bytes.Buffer
	buf.WriteString(method)
	buf.WriteByte(0)
	if len(params) > 0 && json.Compact(&buf, params) != nil {
		return "", false
	}
	return buf.String(), true
}

// flight is one deduplicated backend call and the callers waiting for it.
// The call belongs to the flight, not to its first caller: it runs on a
// goroutine of the Bridge and ends early only when every caller has left.
type flight struct {
	done   chan struct{} // closed once res and err are set
	res    json.RawMessage
	err    error
	cancel context.CancelFunc
	// waiters is guarded by policies.mu.
	waiters int
}

// joinOrStart waits for the flight of key, starting it with call if there
// is none.
func (ps *policies) joinOrStart(ctx context.Context, key string, call func(context.Context) (json.RawMessage, error)) (json.RawMessage, error) {
	b := ps.b
	ps.mu.Lock()
	f := ps.flights[key]
	if f != nil {
		f.waiters++
		ps.coalesced.Add(1)
	} else {
		fctx, cancel := context.WithTimeout(b.bgCtx, b.opts.CallTimeout)
		f = &flight{done: make(chan struct{}), cancel: cancel, waiters: 1}
		started := b.goBackground(func(context.Context) {
			defer cancel()
			res, err := call(fctx)
			ps.mu.Lock()
			f.res, f.err = res, err
			if ps.flights[key] == f {
				delete(ps.flights, key)
			}
			ps.mu.Unlock()
			close(f.done)
		})
		if !started {
			ps.mu.Unlock()
			cancel()
			return nil, newError(CodeDraining, "gateway is shutting down", nil)
		}
		ps.flights[key] = f
	}
	ps.mu.Unlock()
	select {
	case <-f.done:
		return f.res, f.err
	case <-ctx.Done():
		ps.mu.Lock()
		if f.waiters--; f.waiters == 0 {
			// Nobody waits any more: end the call; a newcomer starts afresh.
			if ps.flights[key] == f {
				delete(ps.flights, key)
			}
			f.cancel()
		}
		ps.mu.Unlock()
		return nil, b.ctxError(ctx)
	}
}

// cached is one reply in the cache.
type cached struct {
	res     json.RawMessage
	expires time.Time
}

func (ps *policies) cached(key string) (json.RawMessage, bool) {
	ps.cacheMu.Lock()
	defer ps.cacheMu.Unlock()
	c := ps.cache[key]
	if c == nil || time.Now().After(c.expires) {
		return nil, false
	}
	return c.res, true
}

// store keeps a reply for ttl, evicting the oldest entries past
// CacheMaxEntries or CacheMaxBytes. A reply larger than a tenth of
// CacheMaxBytes is not kept.
func (ps *policies) store(key string, res json.RawMessage, ttl time.Duration) {
	size := int64(len(key) + len(res))
	if size > ps.b.opts.CacheMaxBytes/10 {
		return
	}
	ps.cacheMu.Lock()
	defer ps.cacheMu.Unlock()
	if old := ps.cache[key]; old != nil {
		ps.cacheBytes -= int64(len(key) + len(old.res))
	} else {
		ps.order = append(ps.order, key)
	}
	ps.cache[key] = &cached{res: res, expires: time.Now().Add(ttl)}
	ps.cacheBytes += size
	for len(ps.cache) > ps.b.opts.CacheMaxEntries || ps.cacheBytes > ps.b.opts.CacheMaxBytes {
		oldest := ps.order[0]
		ps.order = ps.order[1:]
		if c := ps.cache[oldest]; c != nil {
			ps.cacheBytes -= int64(len(oldest) + len(c.res))
			delete(ps.cache, oldest)
		}
	}
	if len(ps.order) > 2*len(ps.cache)+16 {
		// Keys stored again left duplicates behind: compact the order.
		seen := make(map[string]bool, len(ps.cache))
		kept := ps.order[:0]
		for _, k := range ps.order {
			if ps.cache[k] != nil && !seen[k] {
				seen[k] = true
				kept = append(kept, k)
			}
		}
		ps.order = kept
	}
}

// answered reports whether a call ended with the backend's answer (a
// result, a JSON-RPC error, or a malformed reply), as opposed to the
// transport failing it.
func answered(err error) bool {
	if err == nil {
		return true
	}
	switch CodeOf(err) {
	case CodeBackendError, CodeMalformedReply:
		return true
	}
	return false
}

// hedged sends the call to a backend and, if it has not answered after
// spec.hedgeAfter (or failed without an answer), a copy to another
// available backend; the first answer wins and the other call is
// abandoned (its context ends: it is cancelled at the backend when
// Options.CancelMethod is set).
func (b *Bridge) hedged(ctx context.Context, quoted []byte, params json.RawMessage, co CallOptions, spec callSpec) (json.RawMessage, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type outcome struct {
		res json.RawMessage
		err error
	}
	out := make(chan outcome, 2)
	launch := func(be *backend) bool {
		s := be.pickSlot()
		return b.goBackground(func(context.Context) {
			res, err := b.attempt(ctx, quoted, params, co, callSpec{slot: s.idx, onResult: spec.onResult})
			out <- outcome{res, err}
		})
	}
	first := b.pickBackend(nil)
	if !launch(first) {
		return nil, newError(CodeDraining, "gateway is shutting down", nil)
	}
	running, hedgedAlready := 1, false
	hedge := func() {
		if hedgedAlready {
			return
		}
		hedgedAlready = true
		if second := b.pickBackend(first); second != first && launch(second) {
			b.counters.hedges.Add(1)
			b.traceEvent(ctx, "hedge", attribute.String("server.address", second.displayURL))
			running++
		}
	}
	timer := time.NewTimer(spec.hedgeAfter)
	defer timer.Stop()
	var last outcome
	for running > 0 {
		select {
		case r := <-out:
			running--
			if answered(r.err) || ctx.Err() != nil {
				return r.res, r.err
			}
			last = r
			hedge() // the first failed without an answer: try the other now
		case <-timer.C:
			hedge()
		}
	}
	return last.res, last.err
}
