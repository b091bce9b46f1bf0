// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Per-port source-prefix allowlist for traffic entering a sandbox.
//
// Attached on egress of the host side of the sandbox's device (tap/veth),
// i.e. on every frame the host hands to the guest. Policy is one LPM trie
// keyed by (dst port, source address as IPv6, IPv4 mapped into
// ::ffff:0:0/96):
//   {16, port}                        -> 0     marker: the port is policed, deny
//   {16 + len, port, IPv6 prefix}     -> 1, 2  allow (2: piece of a split prefix)
//   {16 + 96 + len, port, ::ffff:v4}  -> 1     allow
//   no match                          -> the port is open
// policed_ports is a bitmap in front of the trie that lets open ports skip
// the lookup.
// Only TCP to a policed port from a source outside its list is dropped.
// Parsing decisions (documented in doc.go):
//   - up to two in-band VLAN tags (802.1Q / 802.1ad) are skipped;
//   - IPv4/IPv6 non-first fragments carry no ports and pass: the first
//     fragment is policed and the guest cannot reassemble without it;
//   - IPv6 extension headers (hop-by-hop, routing, destination options,
//     fragment, AH) are walked, at most MAX_EXT of them; more -> drop;
//   - IPv6 sources inside ::ffff:0:0/96 (never legitimate on the wire) only
//     match the marker, so they are dropped on policed ports;
//   - a TCP port field the program cannot reach (truncated, beyond
//     MAX_OFF, IPv4 IHL < 5) -> drop (fail closed).
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_HLEN	14
#define ETH_P_IP	0x0800
#define ETH_P_IPV6	0x86DD
#define ETH_P_8021Q	0x8100
#define ETH_P_8021AD	0x88A8
#define PROTO_HOPOPTS	0
#define PROTO_TCP	6
#define PROTO_ROUTING	43
#define PROTO_FRAGMENT	44
#define PROTO_AH	51
#define PROTO_DSTOPTS	60
#define MAX_VLAN	2
#define MAX_EXT		6
#define MAX_OFF		4096

#define PASS TC_ACT_UNSPEC	/* TCX_NEXT: let later programs decide */
#define DROP TC_ACT_SHOT

// The trie key. The address starts at byte 6; reading or writing it as
// words at a misaligned stack offset is rejected by the verifier, so the key
// lives at offset 2 of an 8-aligned buffer and the address is 8-aligned.
struct lpm_key {
	__u32 prefixlen;
	__be16 port;
	__u32 addr[4];
} __attribute__((packed));

struct keybuf {
	__u16 pad;
	struct lpm_key key;
} __attribute__((packed, aligned(8)));

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_key);
	__type(value, __u32);
	__uint(max_entries, 1 << 20);
} policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} drops SEC(".maps");

// Bit p set: port p may be policed (it has, or is about to get, a marker).
// A clear bit skips the trie lookup, so open ports cost next to nothing; for
// a set bit the trie alone decides. The loader sets bits before it adds
// markers and clears them after it removed them.
__u64 policed_ports[65536 / 64];

enum { PARSED_PASS, PARSED_DROP, PARSED_LOOKUP };

// reach returns a pointer to len bytes at off, pulling non-linear data into
// the linear area when needed; NULL if the packet is shorter. It invalidates
// every packet pointer obtained before.
static __always_inline void *reach(struct __sk_buff *skb, __u32 off, __u32 len)
{
	void *data, *end;

	if (off > MAX_OFF)
		return NULL;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (data + off + len <= end)
		return data + off;
	if (bpf_skb_pull_data(skb, off + len) < 0)
		return NULL;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (data + off + len > end)
		return NULL;
	return data + off;
}

static __always_inline int parse(struct __sk_buff *skb, struct lpm_key *key)
{
	__u32 off = ETH_HLEN, tcp = 0;
	__be16 proto;
	__u8 *p;

	p = reach(skb, 12, 2);
	if (!p)
		return PARSED_PASS; /* not even an Ethernet header */
	proto = *(__be16 *)p;
#pragma unroll
	for (int i = 0; i < MAX_VLAN; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		p = reach(skb, off + 2, 2);
		if (!p)
			return PARSED_PASS;
		proto = *(__be16 *)p;
		off += 4;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		__u32 ihl;

		p = reach(skb, off, 20);
		if (!p)
			return PARSED_PASS; /* cannot be a TCP segment the guest accepts */
		if (p[9] != PROTO_TCP)
			return PARSED_PASS;
		if (*(__be16 *)(p + 6) & bpf_htons(0x1fff))
			return PARSED_PASS; /* non-first fragment */
		ihl = (p[0] & 0xf) * 4;
		if (ihl < 20)
			return PARSED_DROP;
		key->prefixlen = 16 + 128;
		key->addr[0] = 0;
		key->addr[1] = 0;
		key->addr[2] = bpf_htonl(0xffff);
		key->addr[3] = *(__u32 *)(p + 12);
		tcp = off + ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		__u8 next;

		p = reach(skb, off, 40);
		if (!p)
			return PARSED_PASS;
		next = p[6];
		__builtin_memcpy(key->addr, p + 8, 16);
		key->prefixlen = 16 + 128;
		if (key->addr[0] == 0 && key->addr[1] == 0 && key->addr[2] == bpf_htonl(0xffff))
			key->prefixlen = 16; /* v4-mapped source: match the marker only */
		off += 40;
#pragma unroll
		for (int i = 0; i < MAX_EXT; i++) {
			if (next == PROTO_TCP) {
				tcp = off;
				break;
			}
			if (next != PROTO_HOPOPTS && next != PROTO_ROUTING && next != PROTO_DSTOPTS &&
			    next != PROTO_FRAGMENT && next != PROTO_AH)
				return PARSED_PASS; /* another upper layer, ESP or no next header */
			p = reach(skb, off, 4);
			if (!p)
				return PARSED_DROP;
			if (next == PROTO_FRAGMENT) {
				if (*(__be16 *)(p + 2) & bpf_htons(0xfff8))
					return PARSED_PASS; /* non-first fragment */
				off += 8;
			} else if (next == PROTO_AH) {
				off += ((__u32)p[1] + 2) * 4;
			} else {
				off += ((__u32)p[1] + 1) * 8;
			}
			next = p[0];
		}
		if (!tcp && next == PROTO_TCP)
			tcp = off;
		if (!tcp)
			return PARSED_DROP; /* header chain longer than we walk */
	} else {
		return PARSED_PASS;
	}

	p = reach(skb, tcp, 4);
	if (!p)
		return PARSED_DROP;
	key->port = *(__be16 *)(p + 2);
	return PARSED_LOOKUP;
}

SEC("tc")
int sailbox_ingress(struct __sk_buff *skb)
{
	struct keybuf kb;
	__u32 *allow, zero = 0;
	__u64 *n;

	switch (parse(skb, &kb.key)) {
	case PARSED_PASS:
		return PASS;
	case PARSED_LOOKUP:
		if (!(policed_ports[bpf_ntohs(kb.key.port) / 64] & (1ULL << (bpf_ntohs(kb.key.port) % 64))))
			return PASS;
		allow = bpf_map_lookup_elem(&policy, &kb.key);
		if (!allow || *allow)
			return PASS;
		break;
	}
	n = bpf_map_lookup_elem(&drops, &zero);
	if (n)
		*n += 1;
	return DROP;
}

// parse_only is sailbox_ingress without the trie lookup: the baseline of the
// per-packet benchmarks.
SEC("tc")
int parse_only(struct __sk_buff *skb)
{
	struct keybuf kb;

	if (parse(skb, &kb.key) == PARSED_DROP)
		return DROP;
	asm volatile("" : : "r"(&kb) : "memory"); /* keep the key stores */
	return PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
