package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

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

// policies applies Options.Methods: per-method lookups, the chain of
// steps of each policy (see call.go), in-flight deduplication and the
// reply cache.
type policies struct {
	b *Bridge

	methods  atomic.Pointer[[]MethodPolicy] // Options.Methods, until SetRules
	byMethod sync.Map                       // method -> policy, up to maxQuoted methods
	n        atomic.Int64
	chains   sync.Map // policy -> invoker

	mu      sync.Mutex
	flights map[string]*flight // guarded by mu: deduplicated calls under way

	cacheMu    sync.Mutex
	cache      map[string]*cached // guarded by cacheMu
	order      []string           // guarded by cacheMu: keys in insertion order, for eviction
	cacheBytes int64              // guarded by cacheMu

	coalesced, cacheHits atomic.Uint64
}

func newPolicies(b *Bridge) *policies {
	ps := &policies{b: b, flights: map[string]*flight{}, cache: map[string]*cached{}}
	ps.methods.Store(&b.opts.Methods)
	return ps
}

// setMethods replaces the method policies; the lookups made of the old
// ones are forgotten.
func (ps *policies) setMethods(methods []MethodPolicy) {
	ps.methods.Store(&methods)
	ps.byMethod.Clear()
	ps.n.Store(0)
}

// of returns the policy for method.
func (ps *policies) of(method string) policy {
	methods := *ps.methods.Load()
	if len(methods) == 0 {
		return policy{}
	}
	if p, ok := ps.byMethod.Load(method); ok {
		return p.(policy)
	}
	var p policy
	var retrySet, dedupSet bool
	for _, r := range methods {
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

// chain returns the invoker of method's calls: its policy's steps over
// the attempt, innermost first: retry, hedge, dedup, cache. It is made
// once per policy.
func (ps *policies) chain(method string) invoker {
	p := ps.of(method)
	if p.plain() {
		return ps.b.attempt
	}
	if inv, ok := ps.chains.Load(p); ok {
		return inv.(invoker)
	}
	b := ps.b
	inv := b.attempt
	if p.retry {
		inv = b.retryStep(inv)
	}
	if p.hedgeAfter > 0 {
		inv = b.hedgeStep(p.hedgeAfter)(inv)
	}
	if p.dedup {
		inv = ps.dedupStep(inv)
	}
	if p.cacheTTL > 0 {
		inv = ps.cacheStep(p.cacheTTL)(inv)
	}
	ps.chains.Store(p, inv)
	return inv
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

// finished is the abortable of a request that ended as it started.
type finished struct{}

func (finished) abort(Code) {}

// cacheStep answers identical calls from the cache for ttl after a
// success.
func (ps *policies) cacheStep(ttl time.Duration) step {
	return func(next invoker) invoker {
		return func(r *request, to sink) abortable {
			key, ok := callKey(r.method, r.params)
			if !ok {
				return next(r, to)
			}
			if res, ok := ps.cached(key); ok {
				ps.cacheHits.Add(1)
				to.settle(outcome{value: res})
				return finished{}
			}
			return next(r, &storing{ps: ps, key: key, ttl: ttl, to: to})
		}
	}
}

// storing keeps a successful outcome in the cache on its way to to.
type storing struct {
	ps  *policies
	key string
	ttl time.Duration
	to  sink
}

func (s *storing) settle(o outcome) {
	if o.err == nil {
		s.ps.store(s.key, o.value, s.ttl)
	}
	s.to.settle(o)
}

// dedupStep makes identical concurrent calls one backend request, a
// flight, whose outcome every caller gets. The flight belongs to no
// caller: each keeps its own deadline, cancellation and wait-for-ready,
// and the flight is given up only when its last caller has left. It
// waits for no backend itself: when it fails because none was available
// (the request was never written), a caller that asked to wait for ready
// waits for a change and joins (or starts) another.
func (ps *policies) dedupStep(next invoker) invoker {
	return func(r *request, to sink) abortable {
		key, ok := callKey(r.method, r.params)
		if !ok {
			return next(r, to)
		}
		j := &joiner{ps: ps, key: key, r: r, to: to, next: next}
		j.join()
		return j
	}
}

// flight is one deduplicated backend request and the callers waiting for
// it.
type flight struct {
	ps  *policies
	key string
	// Guarded by ps.mu.
	joiners map[*joiner]struct{} // nil once the outcome is handed out
	inner   abortable            // nil until the request is under way
}

// joiner is one caller of a deduplicated call.
type joiner struct {
	// Static after dedupStep.
	ps   *policies
	key  string
	r    *request
	to   sink
	next invoker

	ended atomic.Bool // the outcome was handed on

	mu sync.Mutex
	// Guarded by mu.
	aborted  Code
	stopWait context.CancelFunc // ends a wait for ready, if any
	// Guarded by ps.mu.
	f *flight
}

// join joins the flight of j's key, starting it if there is none.
func (j *joiner) join() {
	ps := j.ps
	j.mu.Lock()
	aborted := j.aborted
	j.mu.Unlock()
	if aborted != 0 {
		return // abort has ended j
	}
	ps.mu.Lock()
	f := ps.flights[j.key]
	start := f == nil
	if start {
		f = &flight{ps: ps, key: j.key, joiners: map[*joiner]struct{}{}}
		ps.flights[j.key] = f
	} else {
		ps.coalesced.Add(1)
	}
	f.joiners[j] = struct{}{}
	j.f = f
	ps.mu.Unlock()
	if !start {
		return
	}
	fr := *j.r
	fr.waitForReady = false // each caller waits for ready itself (see dedupStep)
	fr.onBackend = nil
	inner := j.next(&fr, f)
	ps.mu.Lock()
	f.inner = inner
	gone := f.joiners != nil && len(f.joiners) == 0
	ps.mu.Unlock()
	if gone {
		inner.abort(CodeCanceled) // every caller left while it started
	}
}

// settle hands the flight's outcome to every caller still waiting.
func (f *flight) settle(o outcome) {
	ps := f.ps
	ps.mu.Lock()
	if ps.flights[f.key] == f {
		delete(ps.flights, f.key)
	}
	joiners := f.joiners
	f.joiners = nil
	ps.mu.Unlock()
	for j := range joiners {
		j.flightEnded(o)
	}
}

func (j *joiner) flightEnded(o outcome) {
	b := j.ps.b
	if !j.r.waitForReady || CodeOf(o.err) != CodeUnavailable {
		j.finish(o)
		return
	}
	// Never written, for want of a backend: wait for one, then go again.
	ctx, stop := context.WithCancel(b.bgCtx)
	j.mu.Lock()
	j.stopWait = stop
	aborted := j.aborted
	j.mu.Unlock()
	if aborted != 0 {
		stop()
		return // abort has ended j
	}
	started := b.goBackground(func(context.Context) {
		defer stop()
		if b.awaitNextChange(ctx) {
			j.join()
		} else if b.closing.Load() {
			j.finish(outcome{err: b.abortError(CodeDraining)})
		}
	})
	if !started {
		stop()
		j.finish(outcome{err: b.abortError(CodeDraining)})
	}
}

func (j *joiner) finish(o outcome) {
	if j.ended.CompareAndSwap(false, true) {
		j.to.settle(o)
	}
}

// abort takes j out of its flight, which is given up when j was its last
// caller, and ends j at once.
func (j *joiner) abort(code Code) {
	ps := j.ps
	j.mu.Lock()
	if j.ended.Load() || j.aborted != 0 {
		j.mu.Unlock()
		return
	}
	j.aborted = code
	stopWait := j.stopWait
	j.mu.Unlock()
	if stopWait != nil {
		stopWait()
	}
	var inner abortable
	ps.mu.Lock()
	if f := j.f; f != nil && f.joiners != nil {
		delete(f.joiners, j)
		if len(f.joiners) == 0 {
			// Nobody waits any more: give the request up; a newcomer
			// starts afresh.
			if ps.flights[f.key] == f {
				delete(ps.flights, f.key)
			}
			inner = f.inner
		}
	}
	ps.mu.Unlock()
	if inner != nil {
		inner.abort(CodeCanceled)
	}
	j.finish(outcome{err: ps.b.abortError(code)})
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
// result, a JSON-RPC error, a malformed reply, or one over the reply
// limit), as opposed to the transport failing it.
func answered(err error) bool {
	if err == nil {
		return true
	}
	switch CodeOf(err) {
	case CodeBackendError, CodeMalformedReply, CodeTooLarge:
		return true
	}
	return false
}

// retryStep sends a call whose reply was lost (its request was written,
// then its connection broke) once more, with a new id, to another backend
// when one is usable (MethodPolicy.Retry).
func (b *Bridge) retryStep(next invoker) invoker {
	return func(r *request, to sink) abortable {
		rt := &retrier{b: b, r: r, to: to, next: next}
		rt.run(r)
		return rt
	}
}

type retrier struct {
	// Static after retryStep.
	b    *Bridge
	r    *request
	to   sink
	next invoker

	mu sync.Mutex
	// Guarded by mu.
	inner   abortable
	aborted Code
	retried bool
}

func (rt *retrier) run(r *request) {
	inner := rt.next(r, rt)
	rt.mu.Lock()
	rt.inner = inner
	code := rt.aborted
	rt.mu.Unlock()
	if code != 0 {
		inner.abort(code)
	}
}

func (rt *retrier) settle(o outcome) {
	if CodeOf(o.err) == CodeReplyLost && rt.r.slot < 0 && !rt.b.closing.Load() {
		rt.mu.Lock()
		again := !rt.retried && rt.aborted == 0
		wasRetried := rt.retried
		rt.retried = true
		rt.mu.Unlock()
		if again {
			rt.b.counters.retries.Add(1)
			if rt.r.span != nil {
				rt.r.span.AddEvent("retry", trace.WithAttributes(attribute.String("cause", o.err.Error())))
			}
			r := *rt.r
			r.avoid = o.be
			rt.run(&r)
			return
		}
		if wasRetried {
			o.err = newError(CodeReplyLost, "backend connection lost after the request was written, twice: it was sent once more after the first loss, and that reply was lost too (the backend may have run the call)", errors.Unwrap(o.err))
		}
	}
	rt.to.settle(o)
}

func (rt *retrier) abort(code Code) {
	rt.mu.Lock()
	rt.aborted = code
	inner := rt.inner
	rt.mu.Unlock()
	if inner != nil {
		inner.abort(code)
	}
}

// hedgeStep sends a call to a backend and, if it has not answered after
// the delay (or has failed without an answer), a copy to another usable
// backend; the first answer wins and the other request is given up (and
// cancelled at the backend with Options.CancelMethod). Each copy is
// pinned to its backend's slot.
func (b *Bridge) hedgeStep(after time.Duration) step {
	return func(next invoker) invoker {
		return func(r *request, to sink) abortable {
			if !b.several() {
				return next(r, to) // one backend: nothing to hedge to
			}
			first := b.router.pick(r.avoid)
			if first == nil {
				return next(r, to) // nothing usable: the attempt fails fast or waits
			}
			h := &hedge{b: b, r: r, to: to, next: next, first: first}
			h.launch(first)
			h.mu.Lock()
			if !h.ended && !h.hedged {
				h.timer = time.AfterFunc(after, h.hedge)
			}
			h.mu.Unlock()
			return h
		}
	}
}

type hedge struct {
	// Static after hedgeStep.
	b     *Bridge
	r     *request
	to    sink
	next  invoker
	first *backend

	mu sync.Mutex
	// Guarded by mu.
	copies  []*hedgeCopy
	running int
	hedged  bool
	aborted Code
	ended   bool
	last    outcome
	timer   *time.Timer
}

// hedgeCopy is one of a hedged call's requests.
type hedgeCopy struct {
	h     *hedge
	inner abortable // guarded by h.mu
	done  bool      // guarded by h.mu
}

func (h *hedge) launch(be *backend) {
	r := *h.r
	r.slot = be.pickSlot().idx
	hc := &hedgeCopy{h: h}
	h.mu.Lock()
	h.running++
	h.copies = append(h.copies, hc)
	h.mu.Unlock()
	inner := h.next(&r, hc)
	h.mu.Lock()
	hc.inner = inner
	var code Code
	if !hc.done {
		if code = h.aborted; h.ended && code == 0 {
			code = CodeCanceled // the other answered meanwhile
		}
	}
	h.mu.Unlock()
	if code != 0 {
		inner.abort(code)
	}
}

// hedge sends the copy to a second backend, once.
func (h *hedge) hedge() {
	h.mu.Lock()
	if h.hedged || h.ended || h.aborted != 0 {
		h.mu.Unlock()
		return
	}
	h.hedged = true
	h.mu.Unlock()
	second := h.b.router.pick(h.first)
	if second == nil || second == h.first {
		return
	}
	h.b.counters.hedges.Add(1)
	if h.r.span != nil {
		h.r.span.AddEvent("hedge", trace.WithAttributes(attribute.String("server.address", second.displayURL)))
	}
	h.launch(second)
}

func (hc *hedgeCopy) settle(o outcome) {
	h := hc.h
	h.mu.Lock()
	h.running--
	hc.done = true
	if h.ended {
		h.mu.Unlock()
		return
	}
	if !answered(o.err) && h.aborted == 0 {
		h.last = o
		if !h.hedged {
			// It failed without an answer: try the other backend now.
			h.mu.Unlock()
			h.hedge()
			h.mu.Lock()
		}
		if h.ended || h.running > 0 {
			h.mu.Unlock()
			return
		}
		o = h.last
	}
	h.ended = true
	if h.timer != nil {
		h.timer.Stop()
	}
	var others []abortable
	for _, x := range h.copies {
		if x != hc && !x.done && x.inner != nil {
			others = append(others, x.inner)
		}
	}
	h.mu.Unlock()
	for _, x := range others {
		x.abort(CodeCanceled)
	}
	h.to.settle(o)
}

func (h *hedge) abort(code Code) {
	h.mu.Lock()
	if h.ended || h.aborted != 0 {
		h.mu.Unlock()
		return
	}
	h.aborted = code
	var running []abortable
	for _, x := range h.copies {
		if !x.done && x.inner != nil {
			running = append(running, x.inner)
		}
	}
	h.mu.Unlock()
	for _, x := range running {
		x.abort(code)
	}
}
