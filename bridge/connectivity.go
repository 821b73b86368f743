package bridge

import "fmt"

// Connectivity is a backend's state, as a gRPC channel's: one state per
// backend, the best of its connections' (ready, then connecting, then
// idle, then transient failure).
type Connectivity int

// The backend states.
const (
	// ConnIdle: no connection, and no failure known (lazy, before the
	// first call, or closed after being idle). A call dials.
	ConnIdle Connectivity = iota
	// ConnConnecting: the first dial (or one after an idle close) is under
	// way.
	ConnConnecting
	// ConnReady: a connection is open.
	ConnReady
	// ConnTransientFailure: the last dial failed; the backend redials in
	// the background with backoff until one succeeds, and takes no calls
	// meanwhile (with one backend, a call waits for a dial under way, or
	// for the backoff with wait-for-ready).
	ConnTransientFailure
	// ConnShutdown: the Bridge is closing.
	ConnShutdown
)

func (c Connectivity) String() string {
	switch c {
	case ConnIdle:
		return "idle"
	case ConnConnecting:
		return "connecting"
	case ConnReady:
		return "ready"
	case ConnTransientFailure:
		return "transient_failure"
	case ConnShutdown:
		return "shutdown"
	}
	return fmt.Sprintf("connectivity(%d)", int(c))
}

// rank orders the states for "the best of its connections".
func (c Connectivity) rank() int {
	return [...]int{ConnIdle: 2, ConnConnecting: 3, ConnReady: 4, ConnTransientFailure: 1, ConnShutdown: 0}[c]
}

// connectivity is the backend's state: the best of its slots'.
func (be *backend) connectivity() Connectivity {
	best := ConnShutdown
	for _, s := range be.slots {
		if c := s.connectivity(); c.rank() > best.rank() {
			best = c
		}
	}
	return best
}

// Why a backend takes no calls (BackendStats.Unavailable).
const (
	UnavailableFailing  = "failing"      // its last dial failed (transient failure)
	UnavailableBreaker  = "breaker_open" // failures in a row opened its circuit breaker
	UnavailableHealth   = "health"       // its health call fails
	UnavailableLag      = "lag"          // its health method's value trails the others' by more than Options.MaxLag
	UnavailableEjected  = "ejected"      // failed calls in a row ejected it (Options.OutlierFailures)
	UnavailableShutdown = "shutdown"     // the Bridge is closing
)
