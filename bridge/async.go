package bridge

import (
	"context"
	"encoding/json"
)

// Go starts a call and returns at once, without a goroutine of its own
// while a connection is open: it is registered and written (or queued) on
// that connection, and done receives the outcome exactly once (see the
// package doc's Callbacks for which goroutine runs it). done must not
// block. cancel gives up on the call: done then gets CodeCanceled unless
// the outcome came first. A call that must wait for a connection (the
// Bridge is dialling) waits on a goroutine of the Bridge.
//
// Go suits faces that keep many calls in flight per client (/ws): a
// pending call then costs a few hundred bytes, not a goroutine stack.
// Call is Go plus a wait; both run the method's policy (see call.go).
func (b *Bridge) Go(method string, params json.RawMessage, co CallOptions, done func(json.RawMessage, error)) (cancel func()) {
	if err := b.plainMethod(method); err != nil {
		done(nil, err)
		return noCancel
	}
	c, err := b.newCall(context.Background(), request{method: method, params: params, slot: -1, waitForReady: co.WaitForReady, onBackend: co.OnBackend}, co)
	if err != nil {
		done(nil, err)
		return noCancel
	}
	c.done = done
	b.startCall(c, b.policies.chain(method), b.deadlineOf(context.Background(), co))
	return c.cancel
}

func noCancel() {}
