package bridge

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// backendSet is the Bridge's backends at one moment. SetBackends replaces
// it whole (readers load it once and see one consistent set); it is never
// changed in place.
type backendSet struct {
	// active take requests: the router's candidates, what readiness
	// counts, in the order configured.
	active []*backend
	// all are active and the retired ones whose calls are still draining:
	// the stats' rows.
	all []*backend
	// slots are every slot the Bridge has made, indexed by slot.idx (a
	// request pinned to a slot, the hub's references): a retired backend's
	// stay, closed, so that an index stays valid.
	slots []*slot
}

// backends returns the backend set in effect.
func (b *Bridge) backends() *backendSet { return b.set.Load() }

// slot returns the slot with index idx.
func (b *Bridge) slot(idx int) *slot { return b.set.Load().slots[idx] }

// errRetired is the cause of the failures of a retired backend's slots:
// the request is routed again, to a backend of the new set.
var errRetired = errors.New("backend removed from the configuration")

// BackendChanges says what a SetBackends did, by display URL.
type BackendChanges struct {
	Added, Removed, Reweighted []string
}

// Empty reports whether nothing changed.
func (c BackendChanges) Empty() bool {
	return len(c.Added) == 0 && len(c.Removed) == 0 && len(c.Reweighted) == 0
}

func (c BackendChanges) String() string {
	var parts []string
	for _, p := range []struct {
		what string
		urls []string
	}{{"added", c.Added}, {"removed", c.Removed}, {"reweighted", c.Reweighted}} {
		if len(p.urls) > 0 {
			parts = append(parts, p.what+" "+strings.Join(p.urls, ", "))
		}
	}
	if len(parts) == 0 {
		return "no change"
	}
	return strings.Join(parts, "; ")
}

// SetBackends makes backends the Bridge's backends (a reload), as
// Options.Backends would be, with the same defaults from Options. An
// entry whose ID (default: its URL) names a running backend keeps it,
// connections and subscriptions included, with the entry's Priority and
// Weight. A new entry starts as at New (dialled at once with
// Options.Eager, else at its first call). A backend left out is retired:
// it takes no new request at once, the requests written to it have until
// Options.CallTimeout to be answered, and then its connections close
// (1001) as if lost: its subscriptions and listeners hear wsbridge_gap
// and move to another backend (Options.Resubscribe), or end. Calls that
// were waiting for its connection go to the new set.
func (b *Bridge) SetBackends(backends []BackendOptions) (BackendChanges, error) {
	var ch BackendChanges
	if len(backends) == 0 {
		return ch, errors.New("no backend: a reload keeps at least one")
	}
	opts := b.opts
	opts.Backends = backends
	if err := Check(opts); err != nil {
		return ch, err
	}
	backends = opts.withDefaults().Backends
	b.setMu.Lock()
	defer b.setMu.Unlock()
	if b.closing.Load() {
		return ch, newError(CodeDraining, "gateway is shutting down", nil)
	}
	old := b.set.Load()
	next := &backendSet{slots: old.slots}
	kept := map[*backend]bool{}
	var started []*backend
	for _, bo := range backends {
		id := backendID(bo)
		var match *backend
		for _, be := range old.active {
			if !kept[be] && backendID(be.opts) == id {
				match = be
				break
			}
		}
		if match == nil {
			be := newBackend(b.runCtx, b, b.nextBackend, len(next.slots), bo)
			b.nextBackend++
			next.slots = append(next.slots[:len(next.slots):len(next.slots)], be.slots...)
			next.active = append(next.active, be)
			started = append(started, be)
			ch.Added = append(ch.Added, be.displayURL)
			continue
		}
		kept[match] = true
		if match.priority.Load() != int64(bo.Priority) || match.weight.Load() != int64(bo.Weight) {
			match.priority.Store(int64(bo.Priority))
			match.weight.Store(int64(bo.Weight))
			ch.Reweighted = append(ch.Reweighted, match.displayURL)
		}
		next.active = append(next.active, match)
	}
	var retired []*backend
	for _, be := range old.active {
		if !kept[be] {
			be.retired.Store(true)
			retired = append(retired, be)
			ch.Removed = append(ch.Removed, be.displayURL)
		}
	}
	for _, be := range old.all {
		if !kept[be] {
			next.all = append(next.all, be) // retired now or before: its row stays while it drains
		}
	}
	next.all = append(next.active[:len(next.active):len(next.active)], next.all...)
	b.set.Store(next)
	for _, be := range started {
		be.start()
		if b.opts.Eager {
			for _, s := range be.slots {
				s.kickDial()
			}
		}
	}
	for _, be := range retired {
		b.wg.Go(func() { b.retire(be) })
	}
	if len(started) > 0 || len(retired) > 0 || len(ch.Reweighted) > 0 {
		b.stateChange()
	}
	return ch, nil
}

// backendID is what identifies a backend across SetBackends.
func backendID(bo BackendOptions) string {
	if bo.ID != "" {
		return bo.ID
	}
	return bo.URL
}

// retire drains be, which SetBackends has taken out of the set: once its
// calls are over (see drained), it ends its slots (their connections close,
// and its subscriptions and listeners move, see slot.run) and its health
// loop, and leaves the stats. It runs on the Bridge's wait group.
func (b *Bridge) retire(be *backend) {
	b.opts.Logger.Info("backend removed: draining its calls", "url", be.redactedURL)
	if !b.drained(be) {
		return // the Bridge is closing
	}
	be.cancel()
	be.wg.Wait()
	b.setMu.Lock()
	cur := b.set.Load()
	next := &backendSet{active: cur.active, slots: cur.slots}
	for _, o := range cur.all {
		if o != be {
			next.all = append(next.all, o)
		}
	}
	b.set.Store(next)
	b.setMu.Unlock()
	b.stateChange()
	b.opts.Logger.Info("backend removed: drained and closed", "url", be.redactedURL)
}

// drained waits until no request waits for a reply on be's connections,
// or CallTimeout (the longest a call may take) has passed. It reports
// false when the Bridge is closing.
func (b *Bridge) drained(be *backend) bool {
	limit := time.NewTimer(b.opts.CallTimeout)
	defer limit.Stop()
	// The requests in flight end by their deadlines at the latest: a short
	// poll, for the rare reload, keeps the request path free of a signal
	// nobody else needs.
	poll := time.NewTicker(drainPoll)
	defer poll.Stop()
	for be.busy() {
		select {
		case <-poll.C:
		case <-limit.C:
			b.opts.Logger.Warn("removed backend: calls still unanswered after the call timeout; closing it", "url", be.redactedURL)
			return true
		case <-be.ctx.Done():
			return false
		}
	}
	return true
}

// drainPoll is how often retire looks whether a removed backend's calls
// are over.
const drainPoll = 20 * time.Millisecond

// retiredError is the error of a request that meets a retired slot.
func retiredError() *Error {
	return newError(CodeUnavailable, fmt.Sprintf("%v (reload)", errRetired), errRetired)
}
