# wsbridge container image: a static binary on distroless, run as non-root.
#
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) \
#                --build-arg COMMIT=$(git rev-parse HEAD) -t wsbridge .
#   docker run --rm -p 8080:8080 -p 9090:9090 -e WSBRIDGE_BACKEND=ws://host:8546/ wsbridge
#
# Without WSBRIDGE_BACKEND (or --backend) it refuses to start and says so;
# -e WSBRIDGE_DEMO=true runs the embedded demo backend instead.
# deploy/kubernetes_test.go checks this file against the Kubernetes manifests.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, so that this layer stays cached while only the source changes.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
ARG COMMIT=unknown
ENV CGO_ENABLED=0
RUN go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/wsbridge ./cmd/wsbridge

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wsbridge /wsbridge
# distroless's nonroot user, by number: Kubernetes can check a uid (not a
# name) against runAsNonRoot.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/wsbridge"]
# In a container, listen on every interface (the defaults are loopback only).
CMD ["serve", "--grpc-addr", "0.0.0.0:9090", "--http-addr", "0.0.0.0:8080"]
