// Package netfilter enforces per-port source-prefix allowlists on traffic
// entering a sandbox, in the kernel, with a small eBPF program.
//
// The program (bpf/ingress.c, compiled by bpf2go; the object is committed and
// `make generate` rebuilds it) runs on egress of the host side of the
// sandbox's device — the tap of a microVM, a veth in tests — which is every
// frame the host hands to the guest. It is attached with a TCX link (kernel
// ≥ 6.6) or, where TCX is missing, as a direct-action filter on a clsact
// qdisc through netlink. The device must carry Ethernet frames (a tap or a
// veth; an L3 tun device is not supported).
//
// # Policy
//
// One LPM trie per device, keyed by (prefix length, destination port, source
// address as 128 bits with IPv4 mapped into ::ffff:0:0/96). A policed port has
// a marker entry {16, port} that denies; each allowed prefix is a longer entry
// that allows; a port without entries is open. A TCP packet is dropped only if
// its destination port is policed and its source is in none of the port's
// prefixes; everything else passes to the next program (TCX_NEXT). IPv4
// prefixes admit only IPv4 sources and IPv6 prefixes only IPv6 sources: an
// IPv6 prefix that contains ::ffff:0:0/96 (::/0, say) is stored as the pieces
// around that range, and List merges them back. A bitmap of policed ports in
// front of the trie lets packets to open ports skip the lookup; the trie
// alone decides for ports whose bit is set. The trie holds up to 1,048,576
// entries: one per prefix plus one marker per policed port (an IPv6 prefix
// containing ::ffff:0:0/96 takes up to 96); a larger policy is refused with
// ResourceExhausted.
//
// # Parsing decisions
//
//   - VLAN: up to two in-band 802.1Q/802.1ad tags are skipped and the packet
//     inside is policed. Frames with more tags pass: a guest without VLAN
//     devices drops them itself. Offloaded tags are not in the packet data.
//   - Fragments: a first fragment (offset 0) is policed like any packet.
//     A non-first fragment carries no ports and passes: the guest cannot
//     reassemble it without the first fragment, which was policed, and
//     Linux discards overlapping fragments.
//   - IPv6 extension headers: hop-by-hop, routing, destination options,
//     fragment and AH are walked, at most six of them. A longer chain is
//     dropped (fail closed; its port cannot be known). ESP, "no next header"
//     and other upper layers pass.
//   - IPv4-mapped IPv6 sources (::ffff:0:0/96, never legitimate on the wire)
//     match only the marker: dropped on policed ports, passed elsewhere.
//   - Unreachable headers: a TCP (or IPv6 extension) header that ends
//     beyond the packet, or more than 4 KiB in, and an IPv4 IHL below 5 are
//     dropped (fail closed). Non-linear packets are pulled in as needed.
//   - The filter is stateless: it sees replies to guest-initiated
//     connections too, which pass because their destination is the guest's
//     ephemeral port, not a policed one. Removing a prefix cuts existing
//     connections from it.
//
// # State and API
//
// Everything lives in the kernel, pinned under /sys/fs/bpf/sailbox/<device>
// (policy, ports and drops maps, and the TCX link or, for tc, the program), so that
// separate processes see and change the same filter: Attach, Apply (attach or
// update), Update, List, Detach, Devices. Updates write new allow entries
// before removing markers of opened ports, add markers of newly policed ports
// next and remove stale allow entries last, so a source allowed before and
// after an update is never refused during it (the port bitmap gains new ports
// first and loses opened ones last). Large lists are written with batch map
// operations. Device names are resolved in the caller's network
// namespace; the pins in the caller's mount namespace (`ip netns exec`
// remounts /sys and hides them: use `nsenter --net=...` to reach a device in
// another network namespace). bpffs is mounted at /sys/fs/bpf if nothing is
// mounted there. The filter runs first on the device (TCX head, tc
// priority 1) and passes with TCX_NEXT, so later programs still run.
// Pins whose device went away (or was re-created under the same name) are
// stale: Update and List report ErrNotAttached, Attach and Apply replace them.
package netfilter
