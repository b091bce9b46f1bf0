package netfilter

import (
	"github.com/sailbox/sailbox/host-supervisor/ingress"
	"net/netip"
	"strings"
	"testing"
)

func TestPolicyEntries(t *testing.T) {
	e, err := Policy{
		8080: {pf("10.0.0.0/8"), pf("2001:db8::/32")},
		9090: {},
	}.entries()
	if err != nil {
		t.Fatal(err)
	}
	want := map[lpmKey]uint32{
		makeKey(16, 8080, [16]byte{}):                       valDeny,
		makeKey(16+96+8, 8080, a("::ffff:10.0.0.0").As16()): valAllow,
		makeKey(16+32, 8080, a("2001:db8::").As16()):        valAllow,
	}
	if len(e) != len(want) {
		t.Fatalf("entries %v, want %v", e, want)
	}
	for k, v := range want {
		if got, ok := e[k]; !ok || got != v {
			t.Errorf("entry bits=%d port=%d addr=%v: got %d (present %v), want %d", k.bits(), k.port(), netip.AddrFrom16(k.addr()), got, ok, v)
		}
	}
	// The key bytes are what the C struct lpm_key holds.
	k := makeKey(144, 0x1f90, a("::ffff:1.2.3.4").As16())
	if k[4] != 0x1f || k[5] != 0x90 || k[6+10] != 0xff || k[6+12] != 1 || k[6+15] != 4 || k.bits() != 144 {
		t.Errorf("key layout % x", k)
	}
}

func TestPolicySplitsAroundMapped(t *testing.T) {
	e, err := Policy{22: {pf("::/0")}}.entries()
	if err != nil {
		t.Fatal(err)
	}
	if len(e) != 1+96 {
		t.Fatalf("::/0 became %d entries, want marker + 96 pieces", len(e))
	}
	for k, v := range e {
		if k.bits() == 16 {
			continue
		}
		piece := netip.PrefixFrom(netip.AddrFrom16(k.addr()), k.bits()-16)
		if v != valSplit || piece.Overlaps(v4Mapped) {
			t.Errorf("piece %s value %d overlaps ::ffff:0:0/96 or is not a split piece", piece, v)
		}
	}
	if got := decode(e).String(); got != "22 ::/0\n" {
		t.Errorf("decode = %q", got)
	}
	// An entry that is also a piece, listed explicitly, is redundant.
	e, _ = Policy{22: {pf("8000::/1"), pf("::/0"), pf("::/1")}}.entries()
	if got := decode(e).String(); got != "22 ::/0\n" {
		t.Errorf("decode = %q", got)
	}
	// ::/1 next to 8000::/1 is not merged into ::/0: it reads back as given.
	e, _ = Policy{22: {pf("8000::/1"), pf("::/1")}}.entries()
	if got := decode(e).String(); got != "22 ::/1,8000::/1\n" {
		t.Errorf("decode = %q", got)
	}
}

func TestPolicyRejects(t *testing.T) {
	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{80: {netip.Prefix{}}}, "invalid prefix"},
		{Policy{80: {netip.PrefixFrom(a("10.0.0.1"), 8)}}, "host bits"},
		{Policy{80: {pf("::ffff:10.0.0.0/104")}}, "IPv4-mapped"},
		{Policy{0: {pf("10.0.0.0/8")}}, "port 0"},
	} {
		if _, err := tc.p.entries(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("entries(%v) = %v, want %q", tc.p, err, tc.want)
		}
	}
}

func TestPolicyString(t *testing.T) {
	p := Policy{443: {pf("10.0.0.0/8"), pf("::/0")}, 22: {pf("192.0.2.0/24")}, 80: {}}
	if got, want := p.String(), "22 192.0.2.0/24\n443 10.0.0.0/8,::/0\n"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}

// TestFromIngress: the ingress package's validated policy is a Policy.
func TestFromIngress(t *testing.T) {
	ports, err := ingress.ParseSpec([]string{"8080", "5432/tcp=10.0.0.0/8,2001:db8::/32", "6379/tcp:public"})
	if err != nil {
		t.Fatal(err)
	}
	validated, err := ingress.Policy(ports, ingress.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var p Policy = validated
	if got, want := p.String(), "5432 10.0.0.0/8,2001:db8::/32\n"; got != want {
		t.Errorf("policy %q, want %q", got, want)
	}
	if _, err := p.entries(); err != nil {
		t.Error(err)
	}
}
