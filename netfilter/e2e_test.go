package netfilter

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sailbox/sailbox/internal/testcap"
)

var (
	guestAddrs = map[bool]netip.Addr{true: a("10.77.0.2"), false: a("fd77::2")}
	h1, h3, h4 = a("10.77.0.1"), a("10.77.0.3"), a("10.77.0.4")
	h61, h63   = a("fd77::1"), a("fd77::3")
	guestPorts = []string{":8080", ":8081", ":8082", ":9090"}
)

// TestEndToEnd attaches the filter to a real veth, in each attach mode, and
// checks real connections from several IPv4 and IPv6 sources.
func TestEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  Mode
		force bool // make TCX look unsupported so ModeAuto falls back
		want  Mode
	}{
		{name: "auto-tcx", mode: ModeAuto, want: ModeTCX},
		{name: "tc", mode: ModeTC, want: ModeTC},
		{name: "auto-fallback-tc", mode: ModeAuto, force: true, want: ModeTC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.force {
				attachTCX = func(link.TCXOptions) (link.Link, error) { return nil, ebpf.ErrNotSupported }
				t.Cleanup(func() { attachTCX = link.AttachTCX })
			}
			tp := newTopo(t)
			tp.filters.Mode = tc.mode
			tp.serve(t, tp.guest, guestPorts...)
			// Servers on the host side at denied addresses, on a policed
			// port number: the guest dials out to them.
			tp.serve(t, tp.host, "10.77.0.3:8080", "[fd77::3]:8080")

			everyoneOpen := []reach{
				{h1, 8080, true}, {h3, 8080, true}, {h61, 8080, true}, {h63, 8080, true},
				{h3, 8081, true}, {h61, 8081, true}, {h63, 8082, true}, {h4, 9090, true},
			}
			tp.expect(t, tp.host, guestAddrs, everyoneOpen)

			pol := Policy{
				8080: {pf("10.77.0.1/32"), pf("fd77::1/128")},
				8081: {pf("10.77.0.0/24")},
				8082: {pf("0.0.0.0/0")},
			}
			tp.in(t, tp.host, func() {
				if err := tp.filters.Attach(tp.dev, pol); err != nil {
					t.Fatal(err)
				}
				if err := tp.filters.Attach(tp.dev, pol); !errors.Is(err, ErrAttached) || status.Code(err) != codes.AlreadyExists {
					t.Errorf("second Attach: %v, want ErrAttached", err)
				}
			})
			if t.Failed() {
				return
			}
			tp.expect(t, tp.host, guestAddrs, []reach{
				{h1, 8080, true}, {h61, 8080, true}, // allowed
				{h3, 8080, false}, {h4, 8080, false}, {h63, 8080, false}, // outside the list
				{h3, 8081, true}, {h4, 8081, true}, {h61, 8081, false}, // /24, no v6 entry
				{h3, 8082, true}, {h63, 8082, false}, // 0.0.0.0/0 is IPv4 only
				{h3, 9090, true}, {h63, 9090, true}, // open port
			})
			// Guest-initiated connections to a denied address on a policed
			// port number: the replies come from port 8080, to the guest's
			// ephemeral port, and pass.
			tp.expect(t, tp.guest, map[bool]netip.Addr{true: h3, false: h63}, []reach{
				{a("10.77.0.2"), 8080, true}, {a("fd77::2"), 8080, true},
			})

			var st State
			tp.in(t, tp.host, func() {
				var err error
				if st, err = tp.filters.List(tp.dev); err != nil {
					t.Fatal(err)
				}
			})
			if st.Mode != tc.want {
				t.Errorf("mode %s, want %s", st.Mode, tc.want)
			}
			if got, want := st.Policy.String(), pol.normalized().String(); got != want {
				t.Errorf("List policy\n%swant\n%s", got, want)
			}
			if st.Drops == 0 {
				t.Errorf("drop counter is 0 after dropped connects")
			}

			// Update: 8080 now admits only .3; 8081 opens; 9090 is policed.
			pol2 := Policy{
				8080: {pf("10.77.0.3/32")},
				9090: {pf("fd77::3/128"), pf("10.77.0.4/32")},
			}
			tp.in(t, tp.host, func() {
				if err := tp.filters.Update(tp.dev, pol2); err != nil {
					t.Fatal(err)
				}
			})
			tp.expect(t, tp.host, guestAddrs, []reach{
				{h3, 8080, true}, {h1, 8080, false}, {h61, 8080, false},
				{h61, 8081, true}, {h1, 8082, true}, {h63, 8082, true},
				{h63, 9090, true}, {h4, 9090, true}, {h1, 9090, false}, {h61, 9090, false},
			})

			// Detach: everyone connects again, pins are gone.
			tp.in(t, tp.host, func() {
				if err := tp.filters.Detach(tp.dev); err != nil {
					t.Fatal(err)
				}
				if _, err := tp.filters.List(tp.dev); !errors.Is(err, ErrNotAttached) {
					t.Errorf("List after Detach: %v, want ErrNotAttached", err)
				}
				if err := tp.filters.Detach(tp.dev); !errors.Is(err, ErrNotAttached) {
					t.Errorf("second Detach: %v, want ErrNotAttached", err)
				}
			})
			if _, err := os.Stat(filepath.Join(tp.filters.root(), tp.dev)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pin directory still there after Detach: %v", err)
			}
			tp.expect(t, tp.host, guestAddrs, everyoneOpen)
		})
	}
}

// TestStalePins: when the device goes away (the VM's tap is deleted) and a
// device with the same name comes back, the old pins are not mistaken for a
// live filter: Update fails, Apply attaches anew.
func TestStalePins(t *testing.T) {
	tp := newTopo(t)
	tp.serve(t, tp.guest, ":8080")
	pol := Policy{8080: {pf("10.77.0.1/32")}}
	tp.in(t, tp.host, func() {
		if err := tp.filters.Attach(tp.dev, pol); err != nil {
			t.Fatal(err)
		}
	})
	// Re-create the veth pair under the same names (addresses, neighbours).
	for _, args := range [][]string{
		{"-n", tp.host, "link", "del", tp.dev},
		{"link", "add", tp.dev, "address", "02:5b:0c:00:00:01", "netns", tp.host, "type", "veth",
			"peer", "name", tp.peer, "address", "02:5b:0c:00:00:02", "netns", tp.guest},
		{"-n", tp.host, "addr", "add", "10.77.0.1/24", "dev", tp.dev},
		{"-n", tp.host, "addr", "add", "10.77.0.3/24", "dev", tp.dev},
		{"-n", tp.guest, "addr", "add", "10.77.0.2/24", "dev", tp.peer},
		{"-n", tp.host, "link", "set", tp.dev, "up"},
		{"-n", tp.guest, "link", "set", tp.peer, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	tp.expect(t, tp.host, guestAddrs, []reach{{h3, 8080, true}})
	tp.in(t, tp.host, func() {
		if err := tp.filters.Update(tp.dev, pol); !errors.Is(err, ErrNotAttached) {
			t.Errorf("Update on a re-created device: %v, want ErrNotAttached", err)
		}
		if err := tp.filters.Apply(tp.dev, pol); err != nil {
			t.Fatal(err)
		}
	})
	tp.expect(t, tp.host, guestAddrs, []reach{{h3, 8080, false}, {h1, 8080, true}})
}

// TestReattach: attach, detach, attach again on the same device, in both
// modes (tc leaves its clsact qdisc in place on detach).
func TestReattach(t *testing.T) {
	for _, mode := range []Mode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			tp := newTopo(t)
			tp.filters.Mode = mode
			tp.serve(t, tp.guest, ":8080")
			for range 2 {
				tp.in(t, tp.host, func() {
					if err := tp.filters.Attach(tp.dev, Policy{8080: {pf("10.77.0.1/32")}}); err != nil {
						t.Fatal(err)
					}
				})
				tp.expect(t, tp.host, guestAddrs, []reach{{h3, 8080, false}, {h1, 8080, true}})
				tp.in(t, tp.host, func() {
					if err := tp.filters.Detach(tp.dev); err != nil {
						t.Fatal(err)
					}
				})
				tp.expect(t, tp.host, guestAddrs, []reach{{h3, 8080, true}})
			}
		})
	}
}

// TestErrorCodes: errors carry the gRPC codes the CLI and API report.
func TestErrorCodes(t *testing.T) {
	testcap.Root(t)
	var f Filters
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"missing device", f.Attach("sbxnf-none0", nil), codes.NotFound},
		{"bad name", f.Attach("a/b", nil), codes.InvalidArgument},
		{"long name", f.Attach("sixteen-chars-xx", nil), codes.InvalidArgument},
		{"bad policy", f.Attach("sbxnf-none0", Policy{80: {netip.PrefixFrom(a("10.0.0.1"), 8)}}), codes.InvalidArgument},
		{"update nothing", f.Update("sbxnf-none0", nil), codes.NotFound},
		{"detach nothing", f.Detach("sbxnf-none0"), codes.NotFound},
		{"bad mode", Filters{Mode: "xdp"}.Attach("sbxnf-none0", nil), codes.InvalidArgument},
	} {
		if got := status.Code(tc.err); got != tc.want {
			t.Errorf("%s: %v (code %v), want %v", tc.name, tc.err, got, tc.want)
		}
	}
	if _, err := f.List("sbxnf-none0"); !errors.Is(err, ErrNotAttached) || status.Code(err) != codes.NotFound {
		t.Errorf("List of nothing: %v", err)
	}
}

// TestRunsFirst: another TCX program that ends the chain with TCX_PASS is
// already on the device; the filter goes in front of it and still drops.
func TestRunsFirst(t *testing.T) {
	tp := newTopo(t)
	tp.serve(t, tp.guest, ":8080")
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, // TC_ACT_OK = TCX_PASS
		License:      "MIT",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pass.Close()
	tp.in(t, tp.host, func() {
		iface, err := net.InterfaceByName(tp.dev)
		if err != nil {
			t.Fatal(err)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: iface.Index, Program: pass, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		if err := tp.filters.Attach(tp.dev, Policy{8080: {pf("10.77.0.1/32")}}); err != nil {
			t.Fatal(err)
		}
	})
	tp.expect(t, tp.host, guestAddrs, []reach{{h3, 8080, false}, {h1, 8080, true}})
}
