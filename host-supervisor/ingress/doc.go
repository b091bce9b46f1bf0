// Package ingress validates a sandbox's ingress port list against the
// contract of DESIGN.md §1 and turns a valid list into the source-CIDR
// policy that the netfilter package enforces in the kernel.
//
// It is pure Go (net/netip, no syscalls) so that the API server, the CLI and
// tests share one definition of what a valid ingress list is.
//
// # Rules (DESIGN.md §1)
//
//   - A port is within 1..65535 and appears at most once in a list.
//   - 10000 is reserved by the platform (the guest agent's vsock port).
//   - 22 may be raw TCP but not HTTP.
//   - Protocol is "http" (the default for a bare port) or "tcp" (raw TCP).
//   - cidr_allowlist applies to raw TCP only. Each entry is a CIDR prefix
//     parsed with net/netip; a malformed prefix, a prefix with host bits set
//     (10.0.0.1/8) and an IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104) are
//     rejected. An empty allowlist means any source.
//   - A well-known unauthenticated service port (see [WellKnownUnauthenticated])
//     as raw TCP needs an allowlist or AllowPublic.
//   - An organisation holds at most Limits.MaxRawTCP concurrent raw-TCP
//     endpoints (default 32); the entry that would exceed it fails with
//     ResourceExhausted naming the entry and the limit.
//
// Two decisions beyond the letter of §1, because both inputs are ambiguous
// and silently picking a meaning would surprise someone: AllowPublic on an
// HTTP port and AllowPublic together with a non-empty allowlist are
// rejected with InvalidArgument.
//
// Errors are *Error values carrying a gRPC status code (InvalidArgument or
// ResourceExhausted); status.Code(err) and status.Convert(err) work on them.
//
// # CLI syntax (ParseSpec)
//
// One argument per port:
//
//	PORT[/PROTO][:public][=CIDR[,CIDR]...]
//
//	8080                               HTTP
//	8080/http                          HTTP
//	2222/tcp                           raw TCP, any source
//	5432/tcp=10.0.0.0/8,2001:db8::/32  raw TCP, only from these prefixes
//	6379/tcp:public                    raw TCP on a well-known port, deliberately public
//
// PROTO defaults to http. ParseSpec only parses; Validate applies the rules.
package ingress
