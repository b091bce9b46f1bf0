package netfilter

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// refDrop is the reference matcher on net/netip: it says whether a TCP
// packet from src to port must be dropped under p.
func refDrop(p Policy, src netip.Addr, port uint16) bool {
	prefixes := p[port]
	if len(prefixes) == 0 {
		return false
	}
	if src.Is4In6() {
		return true // mapped sources never match an allow entry (documented)
	}
	for _, pfx := range prefixes {
		if pfx.Contains(src) {
			return false
		}
	}
	return true
}

// randPrefix returns a valid allowlist prefix, biased toward the cases that
// stress the key layout: short IPv6 prefixes containing ::ffff:0:0/96, IPv6
// prefixes next to it, and IPv4 prefixes of every length.
func randPrefix(r *rand.Rand) netip.Prefix {
	switch r.IntN(6) {
	case 0, 1:
		var b [4]byte
		randBytes(r, b[:])
		return netip.PrefixFrom(netip.AddrFrom4(b), r.IntN(33)).Masked()
	case 2: // contains the mapped range
		return netip.PrefixFrom(v4Mapped.Addr(), r.IntN(96)).Masked()
	case 3: // near the mapped range
		a := v4Mapped.Addr().As16()
		a[r.IntN(12)] ^= 1 << r.IntN(8)
		for {
			p := netip.PrefixFrom(netip.AddrFrom16(a), r.IntN(129)).Masked()
			if !p.Addr().Is4In6() {
				return p
			}
		}
	default:
		var b [16]byte
		randBytes(r, b[:])
		b[0] &= 0x3f // 2000::/3 and below, so that sources hit them
		for {
			p := netip.PrefixFrom(netip.AddrFrom16(b), r.IntN(129)).Masked()
			if !p.Addr().Is4In6() {
				return p
			}
			b[0] |= 0x20
		}
	}
}

func randBytes(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

// randSource returns a source inside one of the prefixes (often), a random
// address, or an IPv4-mapped IPv6 address.
func randSource(r *rand.Rand, prefixes []netip.Prefix) netip.Addr {
	switch n := r.IntN(10); {
	case n < 6 && len(prefixes) > 0:
		pfx := prefixes[r.IntN(len(prefixes))]
		a := pfx.Addr().AsSlice()
		rnd := make([]byte, len(a))
		randBytes(r, rnd)
		for i := range a {
			bit := i * 8
			if bit >= pfx.Bits() {
				a[i] = rnd[i]
			} else if bit+8 > pfx.Bits() {
				keep := byte(0xff << (8 - (pfx.Bits() - bit)))
				a[i] = a[i]&keep | rnd[i]&^keep
			}
		}
		if r.IntN(4) == 0 { // flip one bit anywhere: often just outside
			a[r.IntN(len(a))] ^= 1 << r.IntN(8)
		}
		addr, _ := netip.AddrFromSlice(a)
		if addr.Is4In6() && r.IntN(2) == 0 {
			addr = addr.Unmap()
		}
		return addr
	case n < 8:
		var b [4]byte
		randBytes(r, b[:])
		return netip.AddrFrom4(b)
	case n < 9:
		var b [16]byte
		randBytes(r, b[:])
		return netip.AddrFrom16(b)
	default:
		var b [4]byte
		randBytes(r, b[:])
		return netip.AddrFrom16(netip.AddrFrom4(b).As16())
	}
}

func randPolicy(r *rand.Rand, ports []uint16) Policy {
	p := make(Policy)
	for _, port := range ports {
		if r.IntN(4) == 0 {
			continue // open
		}
		n := r.IntN(12)
		for range n {
			p[port] = append(p[port], randPrefix(r))
		}
	}
	return p
}

// TestDifferential runs 100,000 random (source, port) pairs against random
// policies through the real program (BPF_PROG_TEST_RUN) and compares each
// verdict with refDrop. Policies are switched with updateMap, so the update
// path is checked too. Frames vary in encapsulation (VLAN tags, IPv6
// extension headers, first fragments), which must not change the verdict.
func TestDifferential(t *testing.T) {
	const pairs, perPolicy = 100_000, 500
	objs := loadTestObjects(t, nil)
	r := rand.New(rand.NewPCG(1, uint64(4)))
	ports := []uint16{22, 80, 443, 5432, 8080, 65535, 1}
	var pol Policy
	var all []netip.Prefix
	mismatches, drops := 0, 0
	for i := range pairs {
		if i%perPolicy == 0 {
			pol = randPolicy(r, ports)
			if err := updateMaps(objs.filterMaps, pol); err != nil {
				t.Fatal(err)
			}
			all = all[:0]
			for _, ps := range pol {
				all = append(all, ps...)
			}
			// The trie must read back as the same policy.
			entries, err := dump(objs.Policy)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := decode(entries).String(), pol.normalized().String(); got != want {
				t.Fatalf("policy read back as\n%s\nwant\n%s", got, want)
			}
		}
		port := ports[r.IntN(len(ports))]
		if r.IntN(10) == 0 {
			port = uint16(r.IntN(65536))
		}
		src := randSource(r, all)
		p := pkt{src: src, sport: uint16(1024 + r.IntN(60000)), dport: port}
		if src.Is4() {
			p.dst = a("10.0.0.2")
		} else {
			p.dst = a("fd00::2")
		}
		switch r.IntN(8) {
		case 0:
			p.vlans = 1 + r.IntN(2)
		case 1:
			p.moreFrag = true
		case 2:
			if !src.Is4() {
				p.ext = []uint8{0, 60}
			}
		}
		got := run(t, objs.Prog, p.bytes()) == retDrop
		if got {
			drops++
		}
		if want := refDrop(pol, src, port); got != want {
			mismatches++
			if mismatches <= 10 {
				t.Errorf("src %s port %d (%+v): program drop=%v, reference drop=%v; policy for port: %v", src, port, p, got, want, pol[port])
			}
		}
	}
	if mismatches > 0 {
		t.Fatalf("%d mismatches in %d pairs", mismatches, pairs)
	}
	// Both outcomes must be well represented, or the test proves little.
	if drops < pairs/5 || drops > pairs*4/5 {
		t.Fatalf("unbalanced sample: %d drops in %d pairs", drops, pairs)
	}
	t.Logf("%d pairs (%d dropped), 0 mismatches", pairs, drops)
}
