# wsbridge: `make help` lists the targets.
GO       ?= go
BIN      := $(CURDIR)/.bin
TOOLS    := $(BIN)/.tools-stamp
RUN_ARGS ?=
# A count, not a duration: a duration-based -fuzztime can fail with a bare
# "context deadline exceeded" on Go 1.26 (golang/go#75804, fixed in 1.27).
FUZZTIME ?= 50000x

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: run
run: ## Start the gateway with the embedded demo backend and the typed demo API (gRPC :9090, HTTP :8080).
	$(GO) run ./cmd/wsbridge serve --demo --demo-tick 1s --descriptor-set examples/demo/demo.binpb $(RUN_ARGS)

VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build
build: ## Build bin/wsbridge (static; version and commit stamped in).
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o bin/wsbridge ./cmd/wsbridge

.PHONY: test
test: vet check-generate check-examples ## vet, the race-enabled tests, and the checks that gen/ and examples/ are not stale.
	$(GO) test -race ./...

.PHONY: vet
vet: ## go vet.
	$(GO) vet ./...

.PHONY: fuzz
fuzz: ## Run each fuzz target for FUZZTIME (default 50000x: a few seconds each).
	$(GO) test ./bridge -run '^$$' -fuzz '^FuzzBackendFrame$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/jsonenc -run '^$$' -fuzz '^FuzzJSONString$$' -fuzztime $(FUZZTIME)
	$(GO) test ./backend -run '^$$' -fuzz '^FuzzServeMessage$$' -fuzztime $(FUZZTIME)
	$(GO) test ./server -run '^$$' -fuzz '^FuzzClientFrame$$' -fuzztime $(FUZZTIME)
	$(GO) test ./jsonrpc -run '^$$' -fuzz '^FuzzParseRequests$$' -fuzztime $(FUZZTIME)
	$(GO) test ./jsonrpc -run '^$$' -fuzz '^FuzzIDRoundTrip$$' -fuzztime $(FUZZTIME)
	$(GO) test ./jsonrpc -run '^$$' -fuzz '^FuzzBrokenFrameIDs$$' -fuzztime $(FUZZTIME)
	$(GO) test ./jsonrpc -run '^$$' -fuzz '^FuzzSubscription$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/jsonscan -run '^$$' -fuzz '^FuzzObject$$' -fuzztime $(FUZZTIME)
	$(GO) test ./internal/jsonpb -run '^$$' -fuzz '^FuzzToValue$$' -fuzztime $(FUZZTIME)
	$(GO) test ./typed -run '^$$' -fuzz '^FuzzResult$$' -fuzztime $(FUZZTIME)
	$(GO) test ./typed -run '^$$' -fuzz '^FuzzParams$$' -fuzztime $(FUZZTIME)

# The code generators, buf, grpcurl and staticcheck are pinned in tools/go.mod
# and installed into .bin/.
$(TOOLS): tools/go.mod tools/go.sum
	cd tools && GOBIN=$(BIN) $(GO) install tool
	@touch $@

.PHONY: tools
tools: $(TOOLS) ## Install the pinned tools into .bin/.

.PHONY: generate
generate: $(TOOLS) ## Regenerate gen/ from proto/ (buf with local plugins).
	$(BIN)/buf lint
	rm -f gen/wsbridge/v1/*.pb.go gen/wsbridge/v1/*.pb.gw.go gen/openapiv2/*.json gen/*.json
	$(BIN)/buf generate

# npm's google-proto-files, pinned, for the google/api protos the example
# imports (fetched at generation time; no copy is committed).
GOOGLE_PROTO_FILES := 6.0.1
GOOGLEAPIS := .cache/npm/node_modules/google-proto-files

$(GOOGLEAPIS)/package.json:
	mkdir -p .cache/npm
	npm install --silent --no-audit --no-fund --prefix .cache/npm google-proto-files@$(GOOGLE_PROTO_FILES)

.PHONY: examples
examples: $(TOOLS) $(GOOGLEAPIS)/package.json ## Rebuild examples/: each example's descriptor set (*.binpb) and Go types in gen/.
	rm -rf examples/.deps && mkdir -p examples/.deps/google/api examples/.deps/wsbridge/v1
	cp $(GOOGLEAPIS)/google/api/annotations.proto $(GOOGLEAPIS)/google/api/http.proto examples/.deps/google/api/
	cp proto/wsbridge/v1/options.proto examples/.deps/wsbridge/v1/
	cd examples && $(BIN)/buf lint
	cd examples && $(BIN)/buf build --path ethereum/proto/eth --exclude-source-info -o ethereum/eth.binpb
	cd examples && $(BIN)/buf build --path demo/proto/demo --exclude-source-info -o demo/demo.binpb
	rm -rf examples/ethereum/gen examples/demo/gen && cd examples && $(BIN)/buf generate --path ethereum/proto/eth --path demo/proto/demo

.PHONY: check-examples
check-examples: examples ## Fail when the committed examples/ build is stale.
	@git diff --exit-code -- examples || { echo "examples/ is stale: run make examples and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- examples)" || { git status --porcelain -- examples; echo "examples/ has uncommitted files: run make examples and commit"; exit 1; }

.PHONY: check-generate
check-generate: generate ## Fail when the committed gen/ is stale.
	@git diff --exit-code -- gen || { echo "gen/ is stale: run make generate and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- gen)" || { git status --porcelain -- gen; echo "gen/ has uncommitted files: run make generate and commit"; exit 1; }

.PHONY: lint
lint: $(TOOLS) check-modules ## go vet, staticcheck, buf lint, tidy modules.
	$(GO) vet ./...
	$(BIN)/staticcheck ./...
	$(BIN)/buf lint

.PHONY: readme-check
readme-check: $(TOOLS) ## Run README.md's grpcurl and curl commands against wsbridge serve on the default ports.
	scripts/readme-check.sh

.PHONY: interop
interop: $(TOOLS) ## Interoperability tests against go-ethereum's JSON-RPC client and server.
	cd interop && $(GO) test -race -count=1 ./...

.PHONY: browser
browser: ## The dashboard in headless Chromium (Debian's chromium package; skips when it is missing). Screenshot in browser/artifacts/ or $$ARTIFACTS_DIR.
	cd browser && $(GO) test -race -count=1 -v ./...

.PHONY: observe
observe: ## The gateway with the demo backend and a Prometheus on 127.0.0.1:9099 scraping it with deploy/observability/alerts.yaml, under a little load, until Ctrl-C (installs Debian's prometheus if missing).
	GO=$(GO) scripts/observe.sh

.PHONY: observe-check
observe-check: ## Test deploy/observability/ (Grafana dashboard, alert rules) against a real Prometheus scraping the gateway under load (module observe/; installs Debian's prometheus if missing).
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  echo "observe-check: installing prometheus (Debian package)"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	fi
	cd observe && WSBRIDGE_REQUIRE_PROMETHEUS=1 $(GO) test -race -count=1 -v ./...

.PHONY: deploy-check
deploy-check: ## Check the Dockerfile, the deploy/kubernetes/ manifests and the deploy/helm/wsbridge chart against the binary (module deploy/).
	cd deploy && $(GO) test -race -count=1 ./...

SCALE_ARGS ?=
.PHONY: scale-demo
scale-demo: ## Three replicas behind nginx (installed if missing), one crashed then one stopped mid-run, then one of two backends crashed; prints per-replica stats and client errors.
	GO=$(GO) scripts/scale-demo.sh $(SCALE_ARGS)

MODULES := . tools interop browser bench/tools deploy observe
.PHONY: check-modules
check-modules: ## Fail when any go.mod or go.sum is not tidy.
	@for m in $(MODULES); do (cd $$m && $(GO) mod tidy -diff >/dev/null) || { echo "$$m: go.mod/go.sum not tidy: run go mod tidy there"; exit 1; }; done

SOAK_ARGS ?= --duration 2m
.PHONY: soak
soak: build ## Soak (backend restarted every 20 s) then flap (200 ms up/down) runs; not part of make test. SOAK_ARGS to change.
	$(GO) run ./cmd/wsbridge-soak --wsbridge bin/wsbridge --mode restart $(SOAK_ARGS)
	$(GO) run ./cmd/wsbridge-soak --wsbridge bin/wsbridge --mode flap --duration 1m --rate 200

BENCH_ARGS ?=
.PHONY: bench
bench: ## Benchmarks, each server its own process, beside the peer gateway proxyd (not part of make test; about 12 minutes, printed at the end). BENCH_ARGS to select cases, durations, concurrency.
	mkdir -p bench/bin
	$(GO) build -o bench/bin/wsbridge ./cmd/wsbridge
	$(GO) build -o bench/bin/benchkit ./bench/benchkit
	cd bench/tools && $(GO) build -o ../bin/ghz github.com/bojand/ghz/cmd/ghz
	# The peer, pinned in bench/peer/go.mod. Where the Go module proxy does not
	# serve it the bench goes on, and reports P-RPC and P-WS as not measured
	# (or measures a bench/bin/proxyd built by hand: the report names its version).
	cd bench/peer && $(GO) build -o ../bin/proxyd github.com/ethereum-optimism/infra/proxyd/cmd/proxyd \
	  || echo "bench: proxyd not built; P-RPC and P-WS need bench/bin/proxyd"
	start=$$(date +%s); \
	$(GO) run ./bench/runner $(BENCH_ARGS) && \
	$(GO) test -run '^$$' -bench . -benchmem ./bridge ./server && \
	echo "make bench took $$(( $$(date +%s) - start )) s"
