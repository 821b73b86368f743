// Package bridge multiplexes many callers' JSON-RPC 2.0 calls over one
// persistent WebSocket to a backend (or a small pool of them).
//
// A Bridge dials lazily on the first call (or at once with Options.Eager),
// lets callers that arrive during a dial wait for that one dial, shares the
// connection among all callers, and redials after a loss with exponential
// backoff. Each call gets an id that is unique for the life of the Bridge;
// the backend's reply is routed back to its caller by that id, whatever the
// order replies arrive in.
//
// The failure contract: every call ends exactly once, by its deadline at the
// latest. A call whose request was written before the connection broke fails
// with CodeReplyLost and is never resent (the backend may have run it). A
// call still queued when the connection broke is sent on the next connection.
//
// The package knows WebSockets and JSON-RPC (package jsonrpc) and nothing of
// gRPC: errors carry a Code of this package, and the client faces in package
// server map those codes to gRPC, HTTP and JSON-RPC.
//
// # Callbacks
//
// The Bridge calls back into its user in four places. None of them runs with
// a lock of the Bridge held, and each says which goroutine runs it and when
// it stops:
//
//   - Options.OnStateChange runs on the Bridge's state goroutine, one call at
//     a time, with the state at the time of the call; changes that come while
//     it runs coalesce into one more call. It may call any method of the
//     Bridge but Close. It is not called after Close returns.
//   - The done function of Go (and of Consumer.Go) runs exactly once: on the
//     goroutine that settles the call (a connection's reader, its teardown, a
//     deadline timer, or a goroutine of the Bridge for a call that had to
//     wait for a connection), or on the caller's goroutine, before Go or
//     cancel returns, when the call ends there (refused at once, or
//     cancelled before it was settled). It must not block; a caller that
//     holds a lock while it calls Go or cancel must not take that lock in
//     done.
//   - A Consumer's deliver function runs on a connection's reader, or on the
//     goroutine that calls the release function of CallHeld; deliveries to
//     one Consumer never overlap and come in order for each subscription.
//     It must not block and must not call the Consumer's Close. Once Close
//     has returned it is not running and is never called again.
//   - The release function of CallHeld (and Consumer.Go's done) delivers the
//     notifications held back for a subscribe reply, on the goroutine that
//     calls it; call it once the reply is on its way to the client.
package bridge
