package netfilter

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sailbox/sailbox/internal/testcap"
)

const (
	retPass = ^uint32(0) // TC_ACT_UNSPEC (-1): TCX_NEXT
	retDrop = 2          // TC_ACT_SHOT
)

// loadTestObjects loads an unattached filter instance holding p.
func loadTestObjects(t testing.TB, p Policy) *objects {
	t.Helper()
	testcap.Root(t)
	objs, err := loadObjects()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	if err := updateMaps(objs.filterMaps, p); err != nil {
		t.Fatal(err)
	}
	return objs
}

func run(t testing.TB, prog *ebpf.Program, frame []byte) uint32 {
	t.Helper()
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret
}

var (
	a  = netip.MustParseAddr
	pf = netip.MustParsePrefix
)

func TestVerdicts(t *testing.T) {
	pol := Policy{
		8080: {pf("10.77.0.0/24"), pf("fd77::/64")},
		8082: {pf("0.0.0.0/0")},
		8083: {pf("::/0")},
		8084: {pf("192.0.2.1/32"), pf("2001:db8::1/128")},
		22:   {pf("::/1")},
		9091: {},
	}
	objs := loadTestObjects(t, pol)
	dst4, dst6 := a("10.77.0.2"), a("fd77::2")
	in4, out4 := a("10.77.0.1"), a("10.78.0.1")
	in6, out6 := a("fd77::1"), a("fd78::1")
	tests := []struct {
		name string
		p    pkt
		want uint32
	}{
		{"v4 allowed", pkt{src: in4, dst: dst4, dport: 8080}, retPass},
		{"v4 denied", pkt{src: out4, dst: dst4, dport: 8080}, retDrop},
		{"v4 open port", pkt{src: out4, dst: dst4, dport: 9090}, retPass},
		{"v4 empty list is open", pkt{src: out4, dst: dst4, dport: 9091}, retPass},
		{"v6 allowed", pkt{src: in6, dst: dst6, dport: 8080}, retPass},
		{"v6 denied", pkt{src: out6, dst: dst6, dport: 8080}, retDrop},
		{"v6 open port", pkt{src: out6, dst: dst6, dport: 9090}, retPass},
		{"0.0.0.0/0 admits v4", pkt{src: out4, dst: dst4, dport: 8082}, retPass},
		{"0.0.0.0/0 does not admit v6", pkt{src: out6, dst: dst6, dport: 8082}, retDrop},
		{"::/0 admits v6", pkt{src: out6, dst: dst6, dport: 8083}, retPass},
		{"::/0 does not admit v4", pkt{src: out4, dst: dst4, dport: 8083}, retDrop},
		{"::/1 admits fd78::1? no, high bit set", pkt{src: out6, dst: dst6, dport: 22}, retDrop},
		{"::/1 admits 2001:db8::5", pkt{src: a("2001:db8::5"), dst: dst6, dport: 22}, retPass},
		{"::/1 does not admit v4", pkt{src: in4, dst: dst4, dport: 22}, retDrop},
		{"/32 exact", pkt{src: a("192.0.2.1"), dst: dst4, dport: 8084}, retPass},
		{"/32 neighbour", pkt{src: a("192.0.2.2"), dst: dst4, dport: 8084}, retDrop},
		{"/128 exact", pkt{src: a("2001:db8::1"), dst: dst6, dport: 8084}, retPass},
		{"/128 neighbour", pkt{src: a("2001:db8::2"), dst: dst6, dport: 8084}, retDrop},
		{"v4-mapped v6 source vs v4 rule", pkt{src: a("::ffff:10.77.0.1"), dst: dst6, dport: 8080}, retDrop},
		{"v4-mapped v6 source vs ::/0", pkt{src: a("::ffff:10.77.0.1"), dst: dst6, dport: 8083}, retDrop},
		{"v4-mapped v6 source, open port", pkt{src: a("::ffff:10.77.0.1"), dst: dst6, dport: 9090}, retPass},
		{"udp to policed port", pkt{src: out4, dst: dst4, dport: 8080, proto: protoUDP}, retPass},
		{"udp6 to policed port", pkt{src: out6, dst: dst6, dport: 8080, proto: protoUDP}, retPass},
		{"reply to guest-initiated flow", pkt{src: out4, dst: dst4, sport: 8080, dport: 40000}, retPass},
		{"v4 first fragment denied", pkt{src: out4, dst: dst4, dport: 8080, moreFrag: true}, retDrop},
		{"v4 first fragment allowed", pkt{src: in4, dst: dst4, dport: 8080, moreFrag: true}, retPass},
		{"v4 non-first fragment passes", pkt{src: out4, dst: dst4, dport: 8080, fragOff: 185}, retPass},
		{"v4 options allowed", pkt{src: in4, dst: dst4, dport: 8080, ihl: 15}, retPass},
		{"v4 options denied", pkt{src: out4, dst: dst4, dport: 8080, ihl: 15}, retDrop},
		{"v4 ihl < 5", pkt{src: in4, dst: dst4, dport: 8080, ihl: 4}, retDrop},
		{"v4 ports unreachable", pkt{src: in4, dst: dst4, dport: 8080, l4len: 4, truncate: 2}, retDrop},
		{"v4 4-byte tcp header allowed", pkt{src: in4, dst: dst4, dport: 8080, l4len: 4}, retPass},
		{"v6 hop-by-hop denied", pkt{src: out6, dst: dst6, dport: 8080, ext: []uint8{0}}, retDrop},
		{"v6 hop-by-hop allowed", pkt{src: in6, dst: dst6, dport: 8080, ext: []uint8{0}}, retPass},
		{"v6 hbh+routing+dstopts+ah denied", pkt{src: out6, dst: dst6, dport: 8080, ext: []uint8{0, 43, 60, 51}}, retDrop},
		{"v6 hbh+routing+dstopts+ah allowed", pkt{src: in6, dst: dst6, dport: 8080, ext: []uint8{0, 43, 60, 51}}, retPass},
		{"v6 6 ext headers allowed", pkt{src: in6, dst: dst6, dport: 8080, ext: []uint8{0, 60, 60, 60, 60, 60}}, retPass},
		{"v6 7 ext headers fail closed", pkt{src: in6, dst: dst6, dport: 8080, ext: []uint8{0, 60, 60, 60, 60, 60, 60}}, retDrop},
		{"v6 7 ext headers, even open port", pkt{src: in6, dst: dst6, dport: 9090, ext: []uint8{0, 60, 60, 60, 60, 60, 60}}, retDrop},
		{"v6 first fragment denied", pkt{src: out6, dst: dst6, dport: 8080, ext: []uint8{44}, moreFrag: true}, retDrop},
		{"v6 first fragment allowed", pkt{src: in6, dst: dst6, dport: 8080, ext: []uint8{44}, moreFrag: true}, retPass},
		{"v6 non-first fragment passes", pkt{src: out6, dst: dst6, dport: 8080, ext: []uint8{44}, fragOff: 100}, retPass},
		{"v6 ext header truncated", pkt{src: in6, dst: dst6, dport: 8080, ext: []uint8{0}, l4len: 1, truncate: 12}, retDrop},
		{"v6 ports unreachable", pkt{src: in6, dst: dst6, dport: 8080, l4len: 2}, retDrop},
		{"v6 udp behind ext headers", pkt{src: out6, dst: dst6, dport: 8080, ext: []uint8{0, 60}, proto: protoUDP}, retPass},
		{"v6 esp passes", pkt{src: out6, dst: dst6, dport: 8080, proto: 50}, retPass},
		{"vlan v4 denied", pkt{src: out4, dst: dst4, dport: 8080, vlans: 1}, retDrop},
		{"vlan v4 allowed", pkt{src: in4, dst: dst4, dport: 8080, vlans: 1}, retPass},
		{"qinq v6 denied", pkt{src: out6, dst: dst6, dport: 8080, vlans: 2}, retDrop},
		{"qinq v6 allowed", pkt{src: in6, dst: dst6, dport: 8080, vlans: 2}, retPass},
		{"three tags pass (not IP to the guest)", pkt{src: out4, dst: dst4, dport: 8080, vlans: 3}, retPass},
		{"arp passes", pkt{src: out4, dst: dst4, dport: 8080, etype: 0x0806}, retPass},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := run(t, objs.Prog, tt.p.bytes())
			if got != tt.want {
				t.Fatalf("verdict %#x, want %#x", got, tt.want)
			}
		})
	}
}

// TestPolicyTooLarge: a policy the trie cannot hold, alone or next to the
// current one during an update, is refused before anything changes.
func TestPolicyTooLarge(t *testing.T) {
	testcap.Root(t)
	spec, err := loadIngress()
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps["policy"].MaxEntries = 100
	var objs objects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	prefixes := func(first, n int) []netip.Prefix {
		var ps []netip.Prefix
		for i := range n {
			ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(first + i), 0}), 24))
		}
		return ps
	}
	if err := updateMaps(objs.filterMaps, Policy{80: prefixes(0, 150)}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("150 prefixes in a 100-entry trie: %v", err)
	}
	if err := updateMaps(objs.filterMaps, Policy{80: prefixes(0, 60)}); err != nil {
		t.Fatal(err)
	}
	err = updateMaps(objs.filterMaps, Policy{80: prefixes(100, 60)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "during the update") {
		t.Fatalf("60 -> 60 other prefixes in a 100-entry trie: %v", err)
	}
	entries, err := dump(objs.Policy)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := decode(entries).String(), (Policy{80: prefixes(0, 60)}).normalized().String(); got != want {
		t.Errorf("the refused update changed the trie:\n%s", got)
	}
}
