// Package backend is wsbridge's demo JSON-RPC 2.0 backend, spoken over
// WebSocket and, one message per request, over plain HTTP POST.
//
// `wsbridge serve --demo` starts one in-process, and `wsbridge backend
// --listen ADDR` runs one on its own. It exists so that the bridge always
// has something real to talk to, and so that tests can observe what reached
// the backend.
//
// Its JSON-RPC handling is its own, written independently of package
// jsonrpc on purpose: it is the oracle the gateway's tests check the
// gateway's one implementation against, so a mistake shared by both would
// have to be made twice.
//
// # Wire
//
// One JSON-RPC 2.0 message per WebSocket text frame: a request, a
// notification, or a batch (a JSON array of them). The requests of one
// connection run concurrently and each reply is written as soon as it is
// ready, so replies may come back in a different order than the requests
// went out. Ids are echoed byte for byte. A batch is answered by one array
// holding the replies of the requests that had ids, or by nothing at all when
// it held only notifications.
//
// The same message may instead be POSTed to any path with Content-Type
// application/json (at most Options.ReadLimit bytes): the reply is the
// response body, with status 200, or 204 when there is nothing to reply.
// This is how HTTP-only JSON-RPC clients, and benchmarks of a direct call
// without a socket, reach the same methods. A POST is a call with no
// connection, so demo_subscribe and demo_unsubscribe answer it with an error,
// and a call still running when the Server shuts down is answered with 503.
//
// # Methods
//
//	echo     params are returned unchanged, byte for byte (null when absent)
//	add      [a, b] -> a+b; exact for integers, float64 otherwise
//	sleep    {"ms": N} or [N] -> {"slept_ms": N} after N milliseconds;
//	         ends at once, with no reply, when the connection goes away
//	fail     {"code": C, "message": M, "data": D} -> that error object
//	         (code defaults to -32000, message to "fail", data omitted when absent)
//	counter  the number of requests this Server has received, this one included
//	demo_subscribe    [intervalMs] or {"interval_ms": N} -> a subscription id
//	                  "0x<n>"; then every interval a demo_subscription
//	                  notification {"subscription": id, "result": {"seq": K}}
//	demo_unsubscribe  [id] -> true (false when there is no such subscription)
//
// With Options.Tick set, every connected client is also sent
//
//	{"jsonrpc":"2.0","method":"tick","params":{"seq":N,"time":"RFC3339Nano"}}
//
// every Tick, with N counting this Server's ticks from 1.
//
// # Lifetime
//
// A Server serves WebSockets and POSTs through ServeHTTP, or on a listener of
// its own through Serve. Shutdown (which Serve calls when its context ends) closes
// every connection with status 1001 (going away) and waits for every
// goroutine the Server started. A Server that has shut down stays shut: it
// refuses new connections with 503.
package backend
