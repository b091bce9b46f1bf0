package netfilter

// The BPF object is committed; `make generate` rebuilds it (clang, llvm-strip
// and libbpf-dev from Debian). Both multiarch include dirs are listed so that
// the same line works on amd64 and arm64 hosts.
//go:generate go tool bpf2go -cc clang -target bpfel -no-global-types ingress bpf/ingress.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
