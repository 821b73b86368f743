// Package deploy holds no code of its own: its tests check the container
// image (../Dockerfile, ../.dockerignore), the Kubernetes manifests
// (kubernetes/) and the Helm chart (helm/wsbridge, rendered with Helm's Go
// library with its defaults and each ci/*-values.yaml) against each other
// and against the wsbridge binary built from ../cmd/wsbridge. Every check
// runs on each rendering: strict decoding into the Kubernetes API types,
// selectors, ports, probes and what they answer on the binary's admin
// listener, flags and WSBRIDGE_* variables, files from mounted Secrets, and
// the termination budget. The chart is also linted (helm lint --strict).
//
// It is a module of its own so that the main module does not depend on the
// Kubernetes and Helm libraries. Run it with
//
//	cd deploy && go test -race -count=1 ./...
package deploy
