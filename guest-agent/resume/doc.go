// Package resume brings a guest up to date after it was restored from a
// snapshot or forked from one: it steps the wall clock to the host's time,
// feeds fresh host entropy into the kernel and reseeds its CRNG (so forks
// stop sharing random state), and for a fork applies the new identity
// (hostname, interface MAC/addresses/gateways) and drops the TCP connections
// that belonged to the old one, keeping listening sockets.
//
// Every privileged action sits behind a small interface (Clock, Entropy,
// Hostnamer, Network, Sockets) so tests can exercise the decisions without
// touching the host; the Linux implementations are the defaults.
package resume
