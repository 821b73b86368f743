package bridge

import (
	"context"
	"encoding/json"
	"testing"
)

// FuzzBackendFrame feeds arbitrary backend frames to the reply router with
// three calls pending (ids 1 to 3). It must not panic; a call either stays
// pending or gets exactly one outcome, and a result is valid JSON.
func FuzzBackendFrame(f *testing.F) {
	for _, seed := range []string{
		`{"jsonrpc":"2.0","id":1,"result":{"a":[1,2]}}`,
		`{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"x","data":null}}`,
		`[{"jsonrpc":"2.0","id":1,"result":1},{"jsonrpc":"2.0","id":3,"result":null}]`,
		`{"jsonrpc":"2.0","id":"2","result":1}`,
		`{"jsonrpc":"2.0","id":3,"result":1,"error":{"code":1,"message":"m"}}`,
		`{"jsonrpc":"2.0","method":"tick","params":{"seq":1}}`,
		`{"jsonrpc":"2.0","id":1,"method":"x"}`,
		`{"jsonrpc":"1.0","id":1,"result":1}`,
		`[]`, `[1,2]`, `null`, `{"id":1e400}`, `{"id":18446744073709551617}`, "\xff\xfe",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		_, c := bareConn()
		var ops []*op
		for id := uint64(1); id <= 3; id++ {
			o := newTestOp(id)
			o.state.Store(opWritten)
			c.pending.add(o)
			ops = append(ops, o)
		}
		c.handleFrame(frame)
		for _, o := range ops {
			select {
			case r := <-o.owner.(resultChan):
				if r.err == nil && !json.Valid(r.value) {
					t.Fatalf("id %d got invalid JSON %q", o.id, r.value)
				}
				if r.err != nil {
					if code := CodeOf(r.err); code != CodeMalformedReply && code != CodeBackendError {
						t.Fatalf("id %d got %v", o.id, r.err)
					}
				}
				if c.pending.take(o.id) != nil {
					t.Fatalf("id %d delivered but still pending", o.id)
				}
				select {
				case r2 := <-o.owner.(resultChan):
					t.Fatalf("id %d delivered twice: %v", o.id, r2)
				default:
				}
			default:
				if c.pending.take(o.id) == nil {
					t.Fatalf("id %d removed without an outcome", o.id)
				}
			}
		}
	})
}

// bareConn is a connection of a Bridge that runs nothing, for feeding the
// reply router frames by hand.
func bareConn() (*Bridge, *conn) {
	b := &Bridge{opts: Options{URL: "ws://x/"}.withDefaults()}
	b.hub = newHub(b, hubOptions{Logger: b.opts.Logger})
	b.rules.Store(&methodRules{})
	b.attempt = b.send
	b.policies = newPolicies(b)
	be := newBackend(context.Background(), b, 0, 0, b.opts.Backends[0])
	b.set.Store(&backendSet{active: []*backend{be}, all: []*backend{be}, slots: be.slots})
	b.router = newRouter(b, b.opts.Balance)
	return b, &conn{b: b, slot: be.slots[0]}
}

// resultChan receives an op's outcome, for tests that drive ops by hand.
type resultChan chan result

func (ch resultChan) opEnded(r result) { ch <- r }

// newTestOp is a call's op whose outcome goes to its owner, a resultChan.
func newTestOp(id uint64) *op {
	return &op{id: id, owner: make(resultChan, 1)}
}
