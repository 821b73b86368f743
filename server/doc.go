// Package server holds wsbridge's client faces: the gRPC services
// (wsbridge.v1.BridgeService and StatsService, with health and reflection),
// REST through grpc-gateway, and GET /__stats. Every face forwards to one
// bridge.Bridge, so all clients share its backend connection.
//
// Run wires them together and owns their lifetime; errors.go is the one
// table that maps bridge failures to gRPC, HTTP and JSON-RPC codes.
package server
