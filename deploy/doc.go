// Package deploy holds no code of its own: its tests check the container
// image (../Dockerfile, ../.dockerignore) and the Kubernetes manifests
// (kubernetes/) against each other and against the wsbridge binary built
// from ../cmd/wsbridge: strict decoding into the Kubernetes API types, the
// kustomization as kubectl apply -k renders it, selectors, ports, probes and
// their gRPC health service names, flags and WSBRIDGE_* variables, and the
// termination budget.
//
// It is a module of its own so that the main module does not depend on the
// Kubernetes libraries. Run it with
//
//	cd deploy && go test -race -count=1 ./...
package deploy
