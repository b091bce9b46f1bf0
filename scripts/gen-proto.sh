#!/usr/bin/env bash
# Regenerates Go code for every .proto under protocol/ with protoc and the Go
# plugins pinned in go.mod (tool directives). With an argument, writes the
# generated tree under that directory instead (the staleness test uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
bindir=$(mktemp -d)
trap 'rm -rf "$bindir"' EXIT
go build -o "$bindir/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bindir/protoc-gen-go-ttrpc" github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc
module=$(go list -m)
for dir in $(find protocol -name '*.proto' -printf '%h\n' | sort -u); do
	PATH="$bindir:$PATH" protoc -I protocol -I /usr/include \
		--go_out="$out" --go_opt=module="$module" \
		--go-ttrpc_out="$out" --go-ttrpc_opt=module="$module" \
		"$dir"/*.proto
done
