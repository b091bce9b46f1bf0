package resume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// inNewNamespaces runs fn on an OS thread of its own that first moves into
// new network and UTS namespaces. The thread is never unlocked, so it exits
// with the goroutine and the namespaces vanish with it: nothing fn does
// reaches the host's network or hostname. fn reports with t.Error (it does
// not run on the test goroutine) and returns early on failure.
func inNewNamespaces(t *testing.T, fn func() error) {
	t.Helper()
	testcap.Root(t)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET | unix.CLONE_NEWUTS); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// setupLink creates an interface with addresses and a default route in
// the current (test) network namespace, and brings lo up.
func setupLink(h *netlink.Handle, name string, addrs []string, gw string) error {
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(lo); err != nil {
		return err
	}
	// A veth pair (with its peer in the same namespace) stands in for the
	// guest's NIC: every kernel the tests run on has veth, not all have dummy.
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		return fmt.Errorf("add veth %s: %w", name, err)
	}
	peer, err := h.LinkByName(name + "p")
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(peer); err != nil {
		return err
	}
	link, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(link); err != nil {
		return err
	}
	// Carrier comes up asynchronously (linkwatch); IPv6 addresses added
	// before it can lose their local route when it does.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if l, err := h.LinkByName(name); err == nil && l.Attrs().OperState == netlink.OperUp {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no carrier", name)
		}
	}
	var ps []netip.Prefix
	for _, a := range addrs {
		p := netip.MustParsePrefix(a)
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: toIPNet(p), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("add %s: %w", a, err)
		}
		ps = append(ps, p)
	}
	if err := waitLocal(context.Background(), h, ps, 5*time.Second); err != nil {
		return err
	}
	if gw != "" {
		if err := h.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
			return fmt.Errorf("route via %s: %w", gw, err)
		}
	}
	return nil
}

// pair is a client/server TCP connection through a listener.
type pair struct{ client, server net.Conn }

func connect(ln net.Listener, network, addr string) (pair, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return pair{}, err
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		return pair{}, err
	}
	return pair{c, s}, nil
}

func (p pair) close() { p.client.Close(); p.server.Close() }

// aborted reports whether a read on c fails because the socket was
// destroyed (rather than timing out).
func aborted(c net.Conn) error {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case err == nil:
		return errors.New("read succeeded on a connection that should be gone")
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("connection still open (read timed out)")
	case errors.Is(err, unix.ECONNABORTED), errors.Is(err, unix.ECONNRESET), errors.Is(err, io.EOF):
		return nil
	}
	return fmt.Errorf("unexpected read error %w", err)
}

// alive checks that data still flows both ways.
func (p pair) alive() error {
	p.client.SetDeadline(time.Now().Add(5 * time.Second))
	p.server.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.client.Write([]byte("ping")); err != nil {
		return err
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(p.server, b); err != nil || string(b) != "ping" {
		return fmt.Errorf("read %q: %v", b, err)
	}
	return nil
}

func TestDevRandomAddAndReseed(t *testing.T) {
	testcap.Root(t)
	b := make([]byte, 256)
	if _, err := io.ReadFull(randReader(t), b); err != nil {
		t.Fatal(err)
	}
	// Adding entropy to the host's pool is harmless: it only mixes in more.
	if err := (DevRandom{}).Add(b); err != nil {
		t.Fatalf("RNDADDENTROPY: %v", err)
	}
	if err := (DevRandom{}).Reseed(); err != nil {
		t.Fatalf("RNDRESEEDCRNG: %v", err)
	}
}

func randReader(t *testing.T) io.Reader {
	f, err := os.Open("/dev/urandom")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestSockDiagDropsConnectionsKeepsListeners(t *testing.T) {
	inNewNamespaces(t, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		defer h.Close()
		if err := setupLink(h, "eth0", []string{"10.0.0.2/24", "fd00::2/64"}, ""); err != nil {
			return err
		}
		ln4, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			return err
		}
		defer ln4.Close()
		ln46, err := net.Listen("tcp", ":0") // dual stack: IPv4 peers appear v4-mapped
		if err != nil {
			return err
		}
		defer ln46.Close()
		p4 := ln4.Addr().(*net.TCPAddr).Port
		p46 := ln46.Addr().(*net.TCPAddr).Port

		var pairs []pair
		for _, c := range []struct {
			ln            net.Listener
			network, addr string
		}{
			{ln4, "tcp4", fmt.Sprintf("10.0.0.2:%d", p4)},
			{ln46, "tcp4", fmt.Sprintf("10.0.0.2:%d", p46)},
			{ln46, "tcp6", fmt.Sprintf("[fd00::2]:%d", p46)},
			{ln4, "tcp4", fmt.Sprintf("127.0.0.1:%d", p4)},
			{ln46, "tcp6", fmt.Sprintf("[::1]:%d", p46)},
		} {
			p, err := connect(c.ln, c.network, c.addr)
			if err != nil {
				return fmt.Errorf("connect %s: %w", c.addr, err)
			}
			defer p.close()
			pairs = append(pairs, p)
		}

		dropped, kept, err := SockDiag{}.DropEstablished(context.Background(), keepLoopback)
		if err != nil {
			return fmt.Errorf("DropEstablished: %w", err)
		}
		// Destroying one end of a local pair resets the other end, which
		// may then be gone before its own SOCK_DESTROY: 3 to 6 destroyed.
		if dropped < 3 || dropped > 6 || kept != 4 {
			t.Errorf("dropped %d kept %d, want 3..6 (3 non-loopback pairs) and 4 (2 loopback pairs)", dropped, kept)
		}
		for i, p := range pairs[:3] {
			for _, c := range []net.Conn{p.client, p.server} {
				if err := aborted(c); err != nil {
					t.Errorf("pair %d %s->%s: %v", i, c.LocalAddr(), c.RemoteAddr(), err)
				}
			}
		}
		for i, p := range pairs[3:] {
			if err := p.alive(); err != nil {
				t.Errorf("loopback pair %d: %v", i, err)
			}
		}
		// Listeners were left alone and accept new connections.
		for _, c := range []struct {
			ln            net.Listener
			network, addr string
		}{
			{ln4, "tcp4", fmt.Sprintf("10.0.0.2:%d", p4)},
			{ln46, "tcp6", fmt.Sprintf("[fd00::2]:%d", p46)},
		} {
			p, err := connect(c.ln, c.network, c.addr)
			if err != nil {
				t.Errorf("listener after drop: %v", err)
				continue
			}
			if err := p.alive(); err != nil {
				t.Errorf("new connection to %s: %v", c.addr, err)
			}
			p.close()
		}
		return nil
	})
}

// TestForkInNamespaces applies a fork's identity for real (hostname,
// netlink, SOCK_DESTROY, /dev/random) inside throwaway namespaces; only the
// clock is a recorder.
func TestForkInNamespaces(t *testing.T) {
	hostBefore, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	inNewNamespaces(t, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		defer h.Close()
		if err := setupLink(h, "eth0", []string{"10.0.0.2/24", "fd00::2/64"}, "10.0.0.1"); err != nil {
			return err
		}
		if err := unix.Sethostname([]byte("parent")); err != nil {
			return err
		}
		ln, err := net.Listen("tcp", ":0")
		if err != nil {
			return err
		}
		defer ln.Close()
		port := ln.Addr().(*net.TCPAddr).Port
		old, err := connect(ln, "tcp4", fmt.Sprintf("10.0.0.2:%d", port))
		if err != nil {
			return err
		}
		defer old.close()
		local, err := connect(ln, "tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return err
		}
		defer local.close()

		nl, err := NewNetlink() // in this thread's namespace
		if err != nil {
			return err
		}
		defer nl.Close()
		hostTime := time.Now()
		clock := &fakeClock{now: hostTime.Add(-2 * time.Hour)} // restored from a snapshot two hours old
		r, err := New(Config{Clock: clock, Net: nl, Logger: quiet()})
		if err != nil {
			return err
		}
		mac, _ := net.ParseMAC("02:5b:00:00:00:07")
		ent := make([]byte, 64)
		io.ReadFull(randReader(t), ent)
		rep, err := r.Apply(context.Background(), Request{
			HostTime: hostTime, Entropy: ent, Generation: 7,
			Identity: &Identity{Hostname: "fork-7", SandboxID: "sb-7", Interfaces: []Interface{{
				Name: "eth0", MAC: mac,
				Addresses: []netip.Prefix{netip.MustParsePrefix("10.1.0.2/24"), netip.MustParsePrefix("fd01::2/64")},
				Gateways:  []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd01::1")},
			}}},
		})
		if err != nil {
			return fmt.Errorf("Apply: %w", err)
		}
		t.Logf("report: %+v", rep)
		if !rep.ClockStepped || len(clock.set) != 1 || !rep.CRNGReseeded || rep.EntropyBytes != 64 {
			t.Errorf("clock/entropy: %+v (clock set %v)", rep, clock.set)
		}
		if got, _ := (KernelHostname{}).Hostname(); got != "fork-7" || rep.Hostname != "fork-7" {
			t.Errorf("hostname %q, report %q", got, rep.Hostname)
		}
		if rep.ConnectionsDropped < 1 || rep.ConnectionsDropped > 2 || rep.ConnectionsKept != 2 {
			t.Errorf("dropped %d kept %d, want 1..2 (one pair) and 2", rep.ConnectionsDropped, rep.ConnectionsKept)
		}

		link, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		if link.Attrs().HardwareAddr.String() != mac.String() || link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("eth0 MAC %s flags %v", link.Attrs().HardwareAddr, link.Attrs().Flags)
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		var got []string
		for _, a := range addrs {
			if p, ok := toPrefix(a.IPNet); ok && !p.Addr().IsLinkLocalUnicast() {
				got = append(got, p.String())
			}
		}
		slices.Sort(got)
		if want := []string{"10.1.0.2/24", "fd01::2/64"}; !slices.Equal(got, want) {
			t.Errorf("addresses %v, want %v", got, want)
		}
		ir := rep.Interfaces[0]
		if !ir.MACChanged || len(ir.AddressesAdded) != 2 || len(ir.AddressesRemoved) != 2 || len(ir.Gateways) != 2 {
			t.Errorf("interface report %+v", ir)
		}
		for fam, want := range map[int]string{netlink.FAMILY_V4: "10.1.0.1", netlink.FAMILY_V6: "fd01::1"} {
			routes, err := h.RouteListFiltered(fam, &netlink.Route{Dst: nil, LinkIndex: link.Attrs().Index}, netlink.RT_FILTER_OIF)
			if err != nil {
				return err
			}
			var gws []string
			for _, r := range routes {
				if r.Gw != nil && (r.Dst == nil || r.Dst.IP.IsUnspecified()) {
					gws = append(gws, r.Gw.String())
				}
			}
			if !slices.Equal(gws, []string{want}) {
				t.Errorf("family %d default routes via %v, want [%s]", fam, gws, want)
			}
		}

		for _, c := range []net.Conn{old.client, old.server} {
			if err := aborted(c); err != nil {
				t.Errorf("old identity's connection %s->%s: %v", c.LocalAddr(), c.RemoteAddr(), err)
			}
		}
		if err := local.alive(); err != nil {
			t.Errorf("loopback connection: %v", err)
		}
		// The listener serves the new addresses right after Apply returns.
		for _, a := range []string{"10.1.0.2", "[fd01::2]"} {
			p, err := connect(ln, "tcp", fmt.Sprintf("%s:%d", a, port))
			if err != nil {
				t.Errorf("listener on the new address %s: %v", a, err)
				continue
			}
			if err := p.alive(); err != nil {
				t.Errorf("new connection to %s: %v", a, err)
			}
			p.close()
		}
		// A stale generation is refused now.
		if _, err := r.Apply(context.Background(), Request{HostTime: time.Now(), Entropy: ent, Generation: 6}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("stale generation: %v", err)
		}
		return nil
	})
	if after, _ := os.Hostname(); after != hostBefore {
		t.Fatalf("host hostname changed from %q to %q", hostBefore, after)
	}
}

func TestNetlinkUnknownInterface(t *testing.T) {
	inNewNamespaces(t, func() error {
		nl, err := NewNetlink()
		if err != nil {
			return err
		}
		defer nl.Close()
		_, err = nl.Configure(context.Background(), Interface{Name: "nosuch0"})
		if status.Code(err) != codes.NotFound {
			t.Errorf("got %v, want NotFound", err)
		}
		return nil
	})
}
