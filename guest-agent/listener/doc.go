// Package listener waits until a TCP port on this machine (the guest) is
// ready: a socket listens on it and, depending on the protocol, a connect
// succeeds (tcp), an HTTP request gets any HTTP response (http), or the
// server sends its SSH identification line (ssh).
//
// Listeners are found through the kernel, not by connecting blindly:
// netlink sock_diag (inet_diag dumps restricted to TCP_LISTEN and the port),
// with /proc/net/tcp{,6} as a fallback when sock_diag is unavailable (no
// inet_diag/tcp_diag in the guest kernel). Knowing the bound address lets the
// probe connect where the listener actually is (a specific address, or
// loopback for a wildcard bind), for IPv4 and IPv6 alike.
//
// Detection is a poll on a short adaptive interval (1 ms growing to 10 ms):
// the kernel offers no notification for a socket entering TCP_LISTEN that an
// unprivileged agent can subscribe to. The sock_diag multicast groups carry
// only socket destruction; the proc connector carries process events; inotify
// and fanotify see no sockets. The one real event source, the
// sock:inet_sock_set_state tracepoint via eBPF, needs BPF and tracepoints in
// the guest kernel and CAP_BPF, and would still need a dump for listeners
// that predate the subscription. A sock_diag query for one port (both
// families) costs about 50 µs, so polling every 10 ms keeps the median
// detection latency near 5 ms (BenchmarkDetectionLatency) for about 0.5% of
// a CPU; peers scan once a second (median 0.5 s). Reading /proc/net/tcp
// lists every TCP socket and costs milliseconds, more on a busy machine, so
// the poll interval is kept at 20 times the average query cost (capped at
// 200 ms): the fallback is slower (median ~40 ms) but cannot eat a CPU.
//
// The package is plain Go with no RPC in it: guest-agent/service puts a thin
// ttrpc layer on top. Errors are gRPC status errors; a timeout is
// codes.DeadlineExceeded with a message that says what was last seen.
package listener
