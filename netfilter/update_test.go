package netfilter

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestUpdateUnderLoad swaps policies over and over while sources that every
// policy allows keep connecting: no connect may fail or need a SYN
// retransmission (TCP_INFO), which is what a dropped SYN leads to.
func TestUpdateUnderLoad(t *testing.T) {
	tp := newTopo(t)
	tp.serve(t, tp.guest, ":8080", ":8081")
	r := rand.New(rand.NewPCG(3, 3))
	noise := func(n int) []netip.Prefix {
		var ps []netip.Prefix
		for range n {
			var b [4]byte
			randBytes(r, b[:])
			if b[0] == 10 {
				b[0] = 11 // keep 10.77.0.3 outside
			}
			ps = append(ps, netip.PrefixFrom(netip.AddrFrom4(b), 16+r.IntN(17)).Masked())
		}
		return ps
	}
	// h1 and h61 are allowed by every policy, by different entries.
	policies := []Policy{
		{8080: append(noise(1000), pf("10.77.0.0/24"), pf("fd77::/64"))},
		{8080: append(noise(1000), pf("10.77.0.1/32"), pf("::/0")), 8081: {pf("10.77.0.1/32"), pf("fd77::/16")}},
		{8080: {pf("0.0.0.0/0"), pf("fd77::1/128")}, 8081: append(noise(500), pf("10.0.0.0/8"), pf("::/0"))},
		{8081: {pf("10.77.0.0/30"), pf("fd77::1/128")}},
	}
	tp.in(t, tp.host, func() {
		if err := tp.filters.Attach(tp.dev, policies[0]); err != nil {
			t.Fatal(err)
		}
	})
	if t.Failed() {
		return
	}

	var stop atomic.Bool
	var ok, failed atomic.Int64
	var wg sync.WaitGroup
	for _, src := range []netip.Addr{h1, h61} {
		for _, port := range []uint16{8080, 8081} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					retrans, err := tp.dialRetrans(t, tp.host, src, netip.AddrPortFrom(guestAddrs[src.Is4()], port), 10*time.Second)
					if err == nil && retrans > 0 {
						err = fmt.Errorf("%d retransmitted segments: a SYN was dropped", retrans)
					}
					if err != nil {
						if failed.Add(1) <= 5 {
							t.Errorf("%s -> %d during updates: %v", src, port, err)
						}
						continue
					}
					ok.Add(1)
				}
			}()
		}
	}
	start := time.Now()
	updates := 0
	for time.Since(start) < 3*time.Second || updates < 40 {
		updates++
		tp.in(t, tp.host, func() {
			if err := tp.filters.Update(tp.dev, policies[updates%len(policies)]); err != nil {
				t.Error(err)
			}
		})
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d updates, %d connects, %d failed", updates, ok.Load(), failed.Load())
	if ok.Load() < 100 {
		t.Errorf("only %d connects during the updates; the test proves little", ok.Load())
	}
	// The policy in force is the last one, denied sources are refused.
	tp.in(t, tp.host, func() {
		if err := tp.filters.Update(tp.dev, policies[3]); err != nil {
			t.Fatal(err)
		}
		st, err := tp.filters.List(tp.dev)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := st.Policy.String(), policies[3].normalized().String(); got != want {
			t.Errorf("List after the updates:\n%swant\n%s", got, want)
		}
	})
	tp.expect(t, tp.host, guestAddrs, []reach{{h4, 8081, false}, {h63, 8081, false}, {h3, 8081, true}, {h4, 8080, true}})
}

// TestPinsAcrossProcesses drives one filter from separate processes, the way
// separate `host-supervisor ingress` invocations do.
func TestPinsAcrossProcesses(t *testing.T) {
	tp := newTopo(t)
	tp.serve(t, tp.guest, ":8080")
	helper := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		cmd.Env = append(os.Environ(), "NETFILTER_HELPER="+strings.Join(append([]string{tp.host, tp.dev}, args...), " "))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	helper("apply", "8080=10.77.0.1/32,fd77::1/128")
	tp.expect(t, tp.host, guestAddrs, []reach{{h1, 8080, true}, {h3, 8080, false}, {h61, 8080, true}})
	if out := helper("list"); !strings.Contains(out, "8080 10.77.0.1/32,fd77::1/128\n") || !strings.Contains(out, "mode=tcx") {
		t.Errorf("list in another process:\n%s", out)
	}
	helper("apply", "8080=10.77.0.3/32")
	tp.expect(t, tp.host, guestAddrs, []reach{{h1, 8080, false}, {h3, 8080, true}})
	tp.in(t, tp.host, func() {
		st, err := tp.filters.List(tp.dev)
		if err != nil {
			t.Fatal(err)
		}
		if st.Policy.String() != "8080 10.77.0.3/32\n" {
			t.Errorf("List here after an update there: %q", st.Policy)
		}
	})
	helper("detach")
	tp.expect(t, tp.host, guestAddrs, []reach{{h1, 8080, true}, {h3, 8080, true}})
}

// TestHelperProcess is the other process of TestPinsAcrossProcesses.
func TestHelperProcess(t *testing.T) {
	spec := os.Getenv("NETFILTER_HELPER")
	if spec == "" {
		t.Skip("helper process of TestPinsAcrossProcesses")
	}
	f := strings.Fields(spec)
	ns, dev, cmd := f[0], f[1], f[2]
	(&topo{}).in(t, ns, func() {
		var err error
		switch cmd {
		case "apply":
			p := Policy{}
			for _, arg := range f[3:] {
				port, list, _ := strings.Cut(arg, "=")
				var n uint16
				fmt.Sscan(port, &n)
				for _, s := range strings.Split(list, ",") {
					p[n] = append(p[n], netip.MustParsePrefix(s))
				}
			}
			err = Apply(dev, p)
		case "list":
			var st State
			st, err = List(dev)
			fmt.Printf("mode=%s drops=%d\n%s", st.Mode, st.Drops, st.Policy)
		case "detach":
			err = Detach(dev)
		}
		if err != nil {
			t.Fatal(err)
		}
	})
}
