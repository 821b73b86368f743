package server

import (
	"strings"
	"testing"
	"time"

	"github.com/wsbridge/wsbridge/backend"
	"github.com/wsbridge/wsbridge/backend/backendtest"
	"github.com/wsbridge/wsbridge/bridge"
	"github.com/wsbridge/wsbridge/bridge/bridgetest"
)

// Subscriptions and listeners are pinned to the backend that created
// them. When it goes, they move to an available backend (with
// --resubscribe, the subscriber gets wsbridge_gap first) or the
// subscription ends with wsbridge_subscriptionLost; a listener moves in
// either case. Two demo backends: the first takes everything (priority)
// until it shuts down.
func TestBackendsSubscriptionsMoveWhenTheirBackendGoes(t *testing.T) {
	for _, resubscribe := range []bool{true, false} {
		name := map[bool]string{true: "resubscribe", false: "end"}[resubscribe]
		t.Run(name, func(t *testing.T) {
			url0, be0 := backendtest.Start(t, backend.Options{Tick: 5 * time.Millisecond})
			url1, _ := backendtest.Start(t, backend.Options{Tick: 5 * time.Millisecond})
			h := start(t, "", func(o *Options) {
				o.Bridge.URL = ""
				o.Bridge.Backends = []bridge.BackendOptions{{URL: url0}, {URL: url1, Priority: 1}}
				o.Bridge.Resubscribe = resubscribe
				o.Bridge.Backoff = bridge.Backoff{Base: 10 * time.Millisecond, Max: 20 * time.Millisecond}
				// Longer than the test waits for the move: a resubscription
				// waiting on the lost backend would show as a hang.
				o.Bridge.CallTimeout = time.Minute
			})
			c := dialWS(t, h)
			if got := c.roundTrip(`{"jsonrpc":"2.0","id":1,"method":"wsbridge_subscribe","params":["tick"]}`); got != `{"jsonrpc":"2.0","id":1,"result":true}` {
				t.Fatal(got)
			}
			got := nextNotNotification(c, c.roundTrip(`{"jsonrpc":"2.0","id":2,"method":"demo_subscribe","params":[5]}`))
			if !strings.Contains(got, `"id":2,"result":`) {
				t.Fatal(got)
			}
			st := h.srv.Bridge().Stats()
			if st.Backends[0].RequestsOut == 0 || st.Backends[1].Connects != 0 {
				t.Fatalf("the standby was used before it was needed: %+v", st.Backends)
			}

			// The first backend shuts down (1001) and refuses to come back.
			go func() { _ = be0.Shutdown(t.Context()) }()
			hang := time.Now().Add(10 * time.Second)
			moved := func() bool { return h.srv.Bridge().Stats().Backends[1].Connects > 0 }
			if resubscribe {
				// wsbridge_gap, then both kinds of notification again, from
				// the second backend; nothing ends.
				var sawGap, subAfter, tickAfter bool
				for i := 0; !(subAfter && tickAfter); i++ {
					msg := c.recv()
					switch {
					case time.Now().After(hang) || strings.Contains(msg, "wsbridge_subscriptionLost"):
						t.Fatalf("after %d messages (gap %v): %s", i, sawGap, msg)
					case strings.Contains(msg, `"method":"wsbridge_gap"`):
						sawGap = true
					case strings.Contains(msg, `"method":"demo_subscription"`) && sawGap && moved():
						subAfter = true
					case strings.Contains(msg, `"method":"tick"`) && sawGap && moved():
						tickAfter = true
					}
				}
				bridgetest.Eventually(t, "the subscription on the second backend", func() bool {
					return h.srv.Bridge().Stats().Subscriptions == 1 && h.srv.Bridge().Stats().Resubscribes >= 1
				})
				return
			}
			// The subscription and the listener end, each with
			// wsbridge_subscriptionLost; new ones go to the second backend.
			var lostSub, lostListen bool
			for i := 0; !(lostSub && lostListen); i++ {
				msg := c.recv()
				switch {
				case time.Now().After(hang) || strings.Contains(msg, "wsbridge_gap"):
					t.Fatalf("after %d messages: %s", i, msg)
				case strings.Contains(msg, `"method":"wsbridge_subscriptionLost"`) && strings.Contains(msg, `"methods":["tick"]`):
					lostListen = true
				case strings.Contains(msg, `"method":"wsbridge_subscriptionLost"`) && strings.Contains(msg, `"subscription":`):
					lostSub = true
				}
			}
			if got := nextNotNotification(c, c.roundTrip(`{"jsonrpc":"2.0","id":3,"method":"wsbridge_subscribe","params":["tick"]}`)); got != `{"jsonrpc":"2.0","id":3,"result":true}` {
				t.Fatal(got)
			}
			if got := nextNotNotification(c, c.roundTrip(`{"jsonrpc":"2.0","id":4,"method":"demo_subscribe","params":[5]}`)); !strings.Contains(got, `"id":4,"result":`) {
				t.Fatal(got)
			}
			var subAfter, tickAfter bool
			for i := 0; !(subAfter && tickAfter); i++ {
				msg := c.recv()
				if time.Now().After(hang) {
					t.Fatalf("after %d messages: %s", i, msg)
				}
				subAfter = subAfter || strings.Contains(msg, `"method":"demo_subscription"`)
				tickAfter = tickAfter || strings.Contains(msg, `"method":"tick"`)
			}
			if !moved() || h.srv.Bridge().Stats().Subscriptions != 1 {
				t.Fatalf("the new subscription is not on the second backend: %+v", h.srv.Bridge().Stats().Backends)
			}
		})
	}
}
