# Baton build. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := build

GO      ?= go
BIN     := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

# Code generators and the linter, pinned. They are built from source into
# ./bin.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPC_GATEWAY_VERSION       := v2.32.0
GOLANGCI_LINT_VERSION      := v2.15.0
GEN_TOOLS := $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc \
             $(BIN)/protoc-gen-grpc-gateway $(BIN)/protoc-gen-openapiv2
TOOLS     := $(GEN_TOOLS) $(BIN)/golangci-lint

TEST_FLAGS ?= -race -timeout 20m

.PHONY: help
help: ## Show this help.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build bin/batond, bin/baton-agent and bin/baton.
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/batond ./server/cmd/batond
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/baton-agent ./agent/cmd/baton-agent
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/baton ./client/cmd/baton

.PHONY: test
test: ## Run every test (unit, conformance, end to end) under the race detector, then 2,000 simulation seeds.
	$(GO) test $(TEST_FLAGS) ./...
	$(GO) test -count=1 -run '^TestSim$$' ./server/scheduler -seeds=2000

SEEDS ?= 100000
.PHONY: sim
sim: ## Run the scheduler simulation for SEEDS seeds (default 100000; about 20 s per 1,000 on 2 cores).
	$(GO) test -count=1 -timeout 0 -run '^TestSim$$' ./server/scheduler -seeds=$(SEEDS)

.PHONY: run
run: build ## Start batond, two local agents and the example nightly load; Ctrl-C stops all.
	@examples/quickstart.sh

.PHONY: bench
bench: ## Benchmark batond and agents on this machine (about 3 minutes); writes docs/benchmarks.md.
	$(GO) run ./e2e/bench -out docs/benchmarks.md $(BENCH_FLAGS)

.PHONY: bench-secure
bench-secure: ## The same benchmark with TLS, agent certificates with approval and API tokens on; writes docs/benchmarks-secure.md.
	$(GO) run ./e2e/bench -secure -out docs/benchmarks-secure.md $(BENCH_FLAGS)

.PHONY: tools
tools: $(TOOLS) ## Install the pinned code generators and linter into ./bin.

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/protoc-gen-grpc-gateway:
	GOBIN=$(BIN) $(GO) install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@$(GRPC_GATEWAY_VERSION)
$(BIN)/protoc-gen-openapiv2:
	GOBIN=$(BIN) $(GO) install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@$(GRPC_GATEWAY_VERSION)
$(BIN)/golangci-lint:
	GOBIN=$(BIN) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

.PHONY: generate
generate: $(GEN_TOOLS) ## Lint the protos and regenerate gen/.
	$(BIN)/buf lint
	rm -rf gen
	$(BIN)/buf generate

.PHONY: check-generated
check-generated: generate ## Fail when gen/ differs from what the protos generate.
	@if [ -n "$$(git status --porcelain -- gen proto)" ]; then \
		echo "generated code is out of date; run 'make generate' and commit:"; \
		git status --porcelain -- gen proto; exit 1; fi

.PHONY: lint
lint: $(BIN)/golangci-lint ## Run golangci-lint (pinned; settings in .golangci.yml).
	$(BIN)/golangci-lint run ./...

.PHONY: check
check: check-generated lint ## gofmt, go vet, golangci-lint, generated code fresh, Windows builds of the agent and CLI.
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOOS=windows $(GO) build -o /dev/null ./agent/cmd/baton-agent
	GOOS=windows $(GO) build -o /dev/null ./client/cmd/baton

.PHONY: clean
clean: ## Remove built binaries and the quickstart's data.
	rm -f $(BIN)/batond $(BIN)/baton-agent $(BIN)/baton
	rm -rf .baton
