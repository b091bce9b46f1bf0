package netfilter

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// Policy maps a guest TCP port to the source prefixes allowed to reach it.
// A port that is absent, or present with an empty list, is open to any
// source. IPv4 prefixes admit IPv4 sources only and IPv6 prefixes IPv6
// sources only (0.0.0.0/0 does not admit IPv6, ::/0 does not admit IPv4).
// ingress.Policy returns a map assignable to Policy.
type Policy map[uint16][]netip.Prefix

// String renders the policy one port per line, sorted:
// "5432 10.0.0.0/8,2001:db8::/32".
func (p Policy) String() string {
	var b strings.Builder
	for _, port := range slices.Sorted(maps.Keys(p)) {
		if len(p[port]) == 0 {
			continue
		}
		strs := make([]string, len(p[port]))
		for i, pfx := range p[port] {
			strs[i] = pfx.String()
		}
		fmt.Fprintf(&b, "%d %s\n", port, strings.Join(strs, ","))
	}
	return b.String()
}

// Values of the policy trie.
const (
	valDeny  uint32 = 0 // port marker {16, port}: the port is policed
	valAllow uint32 = 1 // an allowed prefix as given
	valSplit uint32 = 2 // a piece of an IPv6 prefix split around ::ffff:0:0/96
)

// keySize is sizeof(struct lpm_key) in bpf/ingress.c.
const keySize = 4 + 2 + 16

// portBits is the length of the port part of the key data.
const portBits = 16

// lpmKey is the trie key: prefix length (host order), destination port
// (network order), source address (IPv6; IPv4 mapped into ::ffff:0:0/96).
type lpmKey [keySize]byte

func makeKey(bits int, port uint16, addr [16]byte) lpmKey {
	var k lpmKey
	binary.NativeEndian.PutUint32(k[0:4], uint32(bits))
	binary.BigEndian.PutUint16(k[4:6], port)
	copy(k[6:], addr[:])
	return k
}

func (k lpmKey) bits() int      { return int(binary.NativeEndian.Uint32(k[0:4])) }
func (k lpmKey) port() uint16   { return binary.BigEndian.Uint16(k[4:6]) }
func (k lpmKey) addr() [16]byte { return [16]byte(k[6:]) }

// v4Mapped is ::ffff:0:0/96, where IPv4 sources live in the trie.
var v4Mapped = netip.MustParsePrefix("::ffff:0:0/96")

// entries returns the trie contents that enforce p.
func (p Policy) entries() (map[lpmKey]uint32, error) {
	out := make(map[lpmKey]uint32)
	for port, prefixes := range p {
		if len(prefixes) == 0 {
			continue
		}
		if port == 0 {
			return nil, fmt.Errorf("port 0 cannot be policed")
		}
		out[makeKey(portBits, port, [16]byte{})] = valDeny
		for _, pfx := range prefixes {
			if err := checkPrefix(pfx); err != nil {
				return nil, fmt.Errorf("port %d: %w", port, err)
			}
			if pfx.Addr().Is4() {
				mapped := netip.AddrFrom16(pfx.Addr().As16())
				out[makeKey(portBits+96+pfx.Bits(), port, mapped.As16())] = valAllow
				continue
			}
			if !pfx.Overlaps(v4Mapped) {
				if k := makeKey(portBits+pfx.Bits(), port, pfx.Addr().As16()); out[k] != valSplit {
					out[k] = valAllow
				}
				continue
			}
			// pfx contains ::ffff:0:0/96 (checkPrefix rejects prefixes
			// inside it): an entry for pfx would also admit IPv4 sources.
			// Allow pfx minus the mapped range instead: the sibling of
			// the path to ::ffff:0:0 at every length below 96.
			// A piece that is also listed on its own stays a piece, so
			// that decode can merge the chain back.
			for _, piece := range splitAroundMapped(pfx) {
				out[makeKey(portBits+piece.Bits(), port, piece.Addr().As16())] = valSplit
			}
		}
	}
	return out, nil
}

func checkPrefix(pfx netip.Prefix) error {
	switch {
	case !pfx.IsValid():
		return fmt.Errorf("invalid prefix %s", pfx)
	case pfx.Masked() != pfx:
		return fmt.Errorf("prefix %s has host bits set", pfx)
	case pfx.Addr().Zone() != "":
		return fmt.Errorf("prefix %s has a zone", pfx)
	case pfx.Addr().Is4In6():
		return fmt.Errorf("prefix %s is IPv4-mapped IPv6; use the IPv4 prefix", pfx)
	}
	return nil
}

// splitAroundMapped returns the prefixes covering pfx except ::ffff:0:0/96,
// for a pfx that contains it.
func splitAroundMapped(pfx netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for l := pfx.Bits() + 1; l <= 96; l++ {
		out = append(out, sibling(l))
	}
	return out
}

// sibling is the prefix of length l that shares l-1 bits with ::ffff:0:0
// and differs in bit l-1.
func sibling(l int) netip.Prefix {
	a := v4Mapped.Addr().As16()
	a[(l-1)/8] ^= 0x80 >> ((l - 1) % 8)
	return netip.PrefixFrom(netip.AddrFrom16(a), l).Masked()
}

// decode turns trie contents back into a Policy: IPv4 entries unmapped,
// split IPv6 pieces merged back into the prefix they came from. Policed
// ports with no allowed prefix appear with an empty, non-nil list. Of the
// IPv6 prefixes containing ::ffff:0:0/96 only the shortest comes back (see
// normalized).
func decode(entries map[lpmKey]uint32) Policy {
	pol := make(Policy)
	v6 := make(map[uint16]map[netip.Prefix]uint32)
	for k, v := range entries {
		port, bits := k.port(), k.bits()-portBits
		if _, ok := pol[port]; !ok {
			pol[port] = []netip.Prefix{}
		}
		if bits == 0 {
			continue // the marker
		}
		addr := netip.AddrFrom16(k.addr())
		if bits >= 96 && v4Mapped.Contains(addr) {
			pol[port] = append(pol[port], netip.PrefixFrom(addr.Unmap(), bits-96))
			continue
		}
		if v6[port] == nil {
			v6[port] = make(map[netip.Prefix]uint32)
		}
		v6[port][netip.PrefixFrom(addr, bits)] = v
	}
	for port, set := range v6 {
		// Merge a chain of siblings that starts with a split piece at
		// length 96 into the prefix it was cut from.
		if set[sibling(96)] == valSplit {
			l := 96
			for l > 1 && set[sibling(l-1)] == valSplit {
				l--
			}
			for m := l; m <= 96; m++ {
				delete(set, sibling(m))
			}
			set[netip.PrefixFrom(v4Mapped.Addr(), l-1).Masked()] = valAllow
		}
		for pfx := range set {
			pol[port] = append(pol[port], pfx)
		}
	}
	for port := range pol {
		slices.SortFunc(pol[port], comparePrefix)
	}
	return pol
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// normalized returns p as List reports it: sorted, without duplicates,
// without open ports, and without the prefixes made redundant by the
// shortest IPv6 prefix containing ::ffff:0:0/96 (they share its trie
// entries): longer prefixes that contain the range too, and prefixes that
// equal one of its pieces.
func (p Policy) normalized() Policy {
	out := make(Policy)
	for port, ps := range p {
		if len(ps) == 0 {
			continue
		}
		shortest := -1
		for _, pfx := range ps {
			if pfx.Addr().Is6() && pfx.Overlaps(v4Mapped) && (shortest < 0 || pfx.Bits() < shortest) {
				shortest = pfx.Bits()
			}
		}
		var c []netip.Prefix
		for _, pfx := range ps {
			redundant := shortest >= 0 && pfx.Addr().Is6() &&
				(pfx.Overlaps(v4Mapped) && pfx.Bits() > shortest ||
					pfx.Bits() > shortest && pfx.Bits() <= 96 && pfx == sibling(pfx.Bits()))
			if !redundant {
				c = append(c, pfx)
			}
		}
		slices.SortFunc(c, comparePrefix)
		out[port] = slices.Compact(c)
	}
	return out
}
