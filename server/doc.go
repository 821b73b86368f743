// Package server holds wsbridge's client faces: the gRPC services
// (wsbridge.v1.BridgeService and StatsService, with health and reflection),
// REST through grpc-gateway, JSON-RPC 2.0 over WebSocket (/ws) and over HTTP
// (/rpc), /__stats, /metrics and the dashboard. Every face forwards to one
// bridge.Bridge, so all clients share its backend connection.
//
// The faces that speak JSON-RPC to a client (/ws, /rpc, the gRPC Session)
// are thin adapters over one session type (session.go), which owns what
// must not differ between them: ids in flight, per-client caps, batches,
// subscriptions, the gateway's own methods, the slow-consumer policy,
// replies and counting. The unary faces (Call, Notify, REST) apply the same
// method rules (checkMethod). errors.go is the one table that maps failures
// to gRPC, HTTP and JSON-RPC codes; the stats are declared once, in
// stats.proto (see package statsdecl).
//
// Run wires them together and owns their lifetime.
package server
