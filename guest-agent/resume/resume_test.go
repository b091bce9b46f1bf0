package resume

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The clock is never set on this machine: these tests check the decisions
// with a clock that only records. The real clock_settime runs in the VM test.
type fakeClock struct {
	now time.Time
	set []time.Time
}

func (c *fakeClock) Now() time.Time        { return c.now }
func (c *fakeClock) Set(t time.Time) error { c.set = append(c.set, t); return nil }

type fakeEntropy struct {
	added   [][]byte
	reseeds int
}

func (e *fakeEntropy) Add(b []byte) error { e.added = append(e.added, b); return nil }
func (e *fakeEntropy) Reseed() error      { e.reseeds++; return nil }

type fakeHost struct {
	name string
	sets int
}

func (h *fakeHost) Hostname() (string, error)  { return h.name, nil }
func (h *fakeHost) SetHostname(n string) error { h.name = n; h.sets++; return nil }

type fakeNet struct{ got []Interface }

func (n *fakeNet) Configure(_ context.Context, ifc Interface) (InterfaceReport, error) {
	n.got = append(n.got, ifc)
	return InterfaceReport{Name: ifc.Name}, nil
}

type fakeSockets struct {
	conns []Conn
	calls int
}

func (s *fakeSockets) DropEstablished(_ context.Context, keep func(Conn) bool) (int, int, error) {
	s.calls++
	var d, k int
	for _, c := range s.conns {
		if keep(c) {
			k++
		} else {
			d++
		}
	}
	return d, k, nil
}

type fakes struct {
	clock *fakeClock
	ent   *fakeEntropy
	host  *fakeHost
	net   *fakeNet
	socks *fakeSockets
}

func newFake(t *testing.T, guestNow time.Time) (*Resumer, *fakes) {
	t.Helper()
	f := &fakes{&fakeClock{now: guestNow}, &fakeEntropy{}, &fakeHost{name: "parent"}, &fakeNet{}, &fakeSockets{}}
	r, err := New(Config{Clock: f.clock, Entropy: f.ent, Host: f.host, Net: f.net, Sockets: f.socks, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return r, f
}

func entropy(n int) []byte { return bytes.Repeat([]byte{0xa5}, n) }

func TestClockStepDecision(t *testing.T) {
	host := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		guest time.Time
		step  bool
	}{
		{"restored from an old snapshot", host.Add(-3 * time.Hour), true},
		{"behind past the threshold", host.Add(-60 * time.Millisecond), true},
		{"behind within the threshold", host.Add(-40 * time.Millisecond), false},
		{"in step", host, false},
		{"ahead by transit time", host.Add(500 * time.Millisecond), false},
		{"ahead past the threshold", host.Add(5 * time.Second), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, f := newFake(t, tc.guest)
			rep, err := r.Apply(context.Background(), Request{HostTime: host, Entropy: entropy(64), Generation: 1})
			if err != nil {
				t.Fatal(err)
			}
			if rep.ClockStepped != tc.step || rep.ClockOffset != tc.guest.Sub(host) {
				t.Fatalf("stepped=%v offset=%v, want stepped=%v offset=%v", rep.ClockStepped, rep.ClockOffset, tc.step, tc.guest.Sub(host))
			}
			if tc.step && (len(f.clock.set) != 1 || !f.clock.set[0].Equal(host)) {
				t.Fatalf("clock set to %v, want %v", f.clock.set, host)
			}
			if !tc.step && len(f.clock.set) != 0 {
				t.Fatalf("clock set to %v although within the thresholds", f.clock.set)
			}
		})
	}
}

func TestEntropyAndReseed(t *testing.T) {
	now := time.Now()
	r, f := newFake(t, now)
	_, err := r.Apply(context.Background(), Request{HostTime: now, Entropy: entropy(63), Generation: 1})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "63 entropy bytes") {
		t.Fatalf("63 bytes: %v", err)
	}
	if len(f.ent.added) != 0 || f.ent.reseeds != 0 || len(f.clock.set) != 0 {
		t.Fatal("an invalid request changed something")
	}
	rep, err := r.Apply(context.Background(), Request{HostTime: now, Entropy: entropy(512), Generation: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.EntropyBytes != 512 || !rep.CRNGReseeded || len(f.ent.added) != 1 || len(f.ent.added[0]) != 512 || f.ent.reseeds != 1 {
		t.Fatalf("report %+v, entropy calls %d/%d", rep, len(f.ent.added), f.ent.reseeds)
	}
	if _, err := r.Apply(context.Background(), Request{Entropy: entropy(64), Generation: 1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("no host time: %v", err)
	}
}

func TestGenerations(t *testing.T) {
	now := time.Now()
	r, _ := newFake(t, now)
	ctx := context.Background()
	for _, g := range []uint64{3, 3, 7} {
		rep, err := r.Apply(ctx, Request{HostTime: now, Entropy: entropy(64), Generation: g})
		if err != nil || rep.Generation != g {
			t.Fatalf("generation %d: %+v, %v", g, rep, err)
		}
	}
	rep, err := r.Apply(ctx, Request{HostTime: now, Entropy: entropy(64), Generation: 5})
	if status.Code(err) != codes.FailedPrecondition || rep.PreviousGeneration != 7 {
		t.Fatalf("stale generation: %+v, %v", rep, err)
	}
	if g, _ := r.Generation(); g != 7 {
		t.Fatalf("generation %d after a refused stale request", g)
	}
}

func TestForkAppliesIdentityAndDropsConnections(t *testing.T) {
	now := time.Now()
	r, f := newFake(t, now)
	lo := netip.MustParseAddrPort
	f.socks.conns = []Conn{
		{lo("10.0.0.2:22"), lo("203.0.113.9:50000")},
		{lo("127.0.0.1:5432"), lo("127.0.0.1:40000")},
		{lo("[::1]:80"), lo("[::1]:40001")},
		{lo("[::ffff:127.0.0.1]:80"), lo("[::ffff:127.0.0.1]:40002")},
		{lo("127.0.0.1:80"), lo("10.0.0.2:40003")}, // not both ends inside the guest's loopback
	}
	ctx := context.Background()

	// A plain restore keeps identity and connections.
	rep, err := r.Apply(ctx, Request{HostTime: now, Entropy: entropy(64), Generation: 1})
	if err != nil || f.socks.calls != 0 || f.host.sets != 0 || rep.Hostname != "" {
		t.Fatalf("restore touched identity or sockets: %+v, %v", rep, err)
	}
	mac, _ := net.ParseMAC("02:00:00:00:00:07")
	id := &Identity{Hostname: "fork-7", SandboxID: "sb-7", Interfaces: []Interface{{
		Name: "eth0", MAC: mac, Addresses: []netip.Prefix{netip.MustParsePrefix("10.1.0.2/24")},
		Gateways: []netip.Addr{netip.MustParseAddr("10.1.0.1")},
	}}}
	rep, err = r.Apply(ctx, Request{HostTime: now, Entropy: entropy(64), Generation: 2, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Hostname != "fork-7" || f.host.name != "fork-7" || rep.SandboxID != "sb-7" || len(f.net.got) != 1 || len(rep.Interfaces) != 1 {
		t.Fatalf("identity not applied: %+v", rep)
	}
	if rep.ConnectionsDropped != 2 || rep.ConnectionsKept != 3 {
		t.Fatalf("dropped %d kept %d, want 2 and 3", rep.ConnectionsDropped, rep.ConnectionsKept)
	}
	// Same identity again: the hostname is already right.
	if rep, err = r.Apply(ctx, Request{HostTime: now, Entropy: entropy(64), Generation: 2, Identity: id}); err != nil || rep.Hostname != "" || f.host.sets != 1 {
		t.Fatalf("reapply: %+v, %v (sets %d)", rep, err, f.host.sets)
	}
	// An explicit drop without a new identity.
	if _, err := r.Apply(ctx, Request{HostTime: now, Entropy: entropy(64), Generation: 3, DropConnections: true}); err != nil || f.socks.calls != 3 {
		t.Fatalf("DropConnections: %v (calls %d)", err, f.socks.calls)
	}
	if _, sb := r.Generation(); sb != "sb-7" {
		t.Fatalf("sandbox id %q", sb)
	}
}

func TestIdentityValidation(t *testing.T) {
	now := time.Now()
	gw := netip.MustParseAddr
	for name, id := range map[string]*Identity{
		"hostname chars":   {Hostname: "bad host"},
		"hostname length":  {Hostname: strings.Repeat("a", 65)},
		"no interface":     {Interfaces: []Interface{{}}},
		"interface twice":  {Interfaces: []Interface{{Name: "eth0"}, {Name: "eth0"}}},
		"long MAC":         {Interfaces: []Interface{{Name: "eth0", MAC: net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8}}}},
		"bad address":      {Interfaces: []Interface{{Name: "eth0", Addresses: []netip.Prefix{{}}}}},
		"two v4 gateways":  {Interfaces: []Interface{{Name: "eth0", Gateways: []netip.Addr{gw("10.0.0.1"), gw("10.0.0.2")}}}},
		"zero gateway":     {Interfaces: []Interface{{Name: "eth0", Gateways: []netip.Addr{gw("0.0.0.0")}}}},
		"name with slash":  {Interfaces: []Interface{{Name: "a/b"}}},
		"name of 16 chars": {Interfaces: []Interface{{Name: "abcdefghijklmnop"}}},
	} {
		r, f := newFake(t, now)
		_, err := r.Apply(context.Background(), Request{HostTime: now, Entropy: entropy(64), Generation: 1, Identity: id})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
		if len(f.ent.added) != 0 || f.host.sets != 0 || len(f.net.got) != 0 {
			t.Errorf("%s: an invalid request changed something", name)
		}
	}
}

func quiet() *slog.Logger {
	if testing.Verbose() {
		return slog.Default()
	}
	return slog.New(slog.DiscardHandler)
}
