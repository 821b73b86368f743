// Package interop tests wsbridge against independent JSON-RPC 2.0
// implementations: go-ethereum's rpc package as the backend (calls, errors
// and its eth-style subscriptions) and as the client of /ws and /rpc. It is
// a module of its own so that the main module does not depend on
// go-ethereum.
package interop
