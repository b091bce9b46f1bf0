# sailbox — top-level build. `make run` starts a local sailbox, `make test` runs everything.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/sailbox/sailbox/internal/version.Version=$(VERSION)
GOFLAGS_STATIC := CGO_ENABLED=0
HOST_CMDS := guest-agent host-supervisor $(if $(wildcard imageinit/main.go),imageinit)
ARM64_CMDS := guest-agent $(if $(wildcard imageinit/main.go),imageinit)

.PHONY: all build deps proto generate test test-short run vm bench fmt vet clean

all: build

build:
	@mkdir -p bin/linux-arm64
	@for c in $(HOST_CMDS); do \
		echo "go build bin/$$c"; \
		$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/$$c ./$$c || exit 1; \
	done
	@for c in $(ARM64_CMDS); do \
		echo "go build bin/linux-arm64/$$c"; \
		$(GOFLAGS_STATIC) GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/linux-arm64/$$c ./$$c || exit 1; \
	done

# deps installs the Debian packages the build and tests need (as root, when missing).
deps:
	@scripts/install-deps.sh

# proto regenerates protocol/*/*.pb.go from the .proto files (protoc from Debian,
# the Go plugins pinned in go.mod as tools).
proto:
	@scripts/gen-proto.sh

# generate rebuilds every generated artefact that is committed (protobuf, bpf2go objects).
generate: proto
	$(GO) generate ./netfilter/...

fmt:
	gofmt -l -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

# test runs the whole suite. Under CI=true, tests whose capability is missing fail instead of skipping.
test: deps build vet
	$(GO) test -count=1 -timeout 28m ./...

test-short: build
	$(GO) test -count=1 -short ./...

run: build
	bin/host-supervisor local

vm: deps build
	bin/host-supervisor vm up

bench: deps build
	$(GO) run ./test/bench

clean:
	rm -rf bin
