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
// The package knows WebSockets and JSON-RPC and nothing of gRPC: errors carry
// a Code of this package, and the client faces in package server map those
// codes to gRPC, HTTP and JSON-RPC.
package bridge
