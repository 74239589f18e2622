# couchdb-controller
#   make demo   run the whole thing locally on a real Kubernetes API server (no cluster needed)
#   make test   unit tests + end-to-end tests on a real kube-apiserver/etcd/kube-controller-manager
#   COUCHDB_REL=<CouchDB release dir> make e2e   the e2e suite on real CouchDB 3.4 nodes

SHELL       := /bin/bash
GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
CACHE_DIR   := $(or $(COUCHDB_CONTROLLER_CACHE),$(XDG_CACHE_HOME),$(HOME)/.cache)/couchdb-controller
BIN_DIR     := $(CACHE_DIR)/bin
BINARY      := $(BIN_DIR)/couchdb-controller
IMAGE       ?= couchdb-controller:$(VERSION)
LDFLAGS     := -s -w -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
E2E_PKGS    := ./test/e2e/...
UNIT_PKGS    = $(shell $(GO) list ./... | grep -v '/test/e2e')

export COUCHDB_CONTROLLER_CACHE := $(CACHE_DIR)

.PHONY: all build test unit e2e controlplane demo bench vet lint fuzz image clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BINARY) ./cmd/couchdb-controller
	@echo "built $(BINARY)"

# Per test binary, with -race on 2 cores: unit packages take 80 s in all (the slowest, placement's
# property tests, 73 s) and the e2e suite 3 minutes; the timeouts leave 5x margin and keep a cold CI
# run (about 10 minutes of control-plane build first) far inside its 90 minutes.
UNIT_TIMEOUT ?= 10m
E2E_TIMEOUT  ?= $(if $(COUCHDB_REL),60m,15m)

## test: everything CI runs: vet, unit tests (race), fuzz seed corpora, and the e2e suite on a real API server.
test: vet controlplane build
	COUCHDB_CONTROLLER_E2E=1 COUCHDB_CONTROLLER_BINARY=$(BINARY) $(GO) test -race -count=1 -timeout $(UNIT_TIMEOUT) $(UNIT_PKGS)
	COUCHDB_CONTROLLER_E2E=1 COUCHDB_CONTROLLER_BINARY=$(BINARY) $(GO) test -race -count=1 -timeout $(E2E_TIMEOUT) -v $(E2E_PKGS) 2>&1 | tee $(CACHE_DIR)/e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+--- )|_test.go:[0-9]+:' ; test $${PIPESTATUS[0]} -eq 0

unit: vet
	$(GO) test -race -count=1 $(UNIT_PKGS)

e2e: controlplane build
	COUCHDB_CONTROLLER_E2E=1 COUCHDB_CONTROLLER_BINARY=$(BINARY) $(GO) test -race -count=1 -timeout $(E2E_TIMEOUT) -v $(E2E_PKGS)

## controlplane: build etcd, kube-apiserver and kube-controller-manager from Go modules (cached by version).
controlplane:
	bash test/controlplane/build.sh

demo: controlplane build
	COUCHDB_CONTROLLER_BINARY=$(BINARY) $(GO) run ./test/demo

bench: controlplane build
	COUCHDB_CONTROLLER_BINARY=$(BINARY) $(GO) run ./test/bench -out test/bench/BENCHMARKS.md

vet:
	$(GO) vet ./...

# SA1019 is off because the product contract watches v1 Endpoints (deprecated since 1.33); the
# EndpointSlice move is kept local to controller/observe.go (STYLE.md section 15).
lint: vet
	@unformatted=$$(gofmt -l cmd controller couch metrics test); if [ -n "$$unformatted" ]; then echo "not gofmt-ed: $$unformatted"; exit 1; fi
	$(GO) run $(STATICCHECK) -checks 'inherit,-SA1019' ./...

## fuzz: run every fuzzer for FUZZTIME each (seed corpora also run in `make test`).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

clean:
	rm -rf $(BIN_DIR)
