package netfilter

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sailbox/sailbox/internal/testcap"
)

// topo is a "host" and a "guest" network namespace joined by a veth pair,
// named uniquely per test. The filter goes on egress of the host side.
//
//	host ns: dev  10.77.0.1 .3 .4 /24, fd77::1 ::3 ::4 /64
//	guest ns: peer 10.77.0.2/24, fd77::2/64, TCP servers
type topo struct {
	host, guest string // namespace names
	dev, peer   string // veth names (host side, guest side)
	filters     Filters
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	testcap.Root(t)
	testcap.Command(t, "ip")
	var b [4]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])[:7]
	tp := &topo{
		host: "sbxnf-h-" + id, guest: "sbxnf-g-" + id,
		dev: "sbh" + id, peer: "sbg" + id,
	}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{tp.host, tp.guest} {
		ip("netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
	}
	// Fixed MACs and permanent neighbour entries: the first IPv6 connect
	// from a secondary address otherwise waits a second for neighbour
	// discovery, which would look like a dropped SYN.
	const hostMAC, guestMAC = "02:5b:0c:00:00:01", "02:5b:0c:00:00:02"
	ip("link", "add", tp.dev, "address", hostMAC, "netns", tp.host, "type", "veth",
		"peer", "name", tp.peer, "address", guestMAC, "netns", tp.guest)
	for _, a := range []string{"10.77.0.1/24", "10.77.0.3/24", "10.77.0.4/24"} {
		ip("-n", tp.host, "addr", "add", a, "dev", tp.dev)
	}
	for _, a := range []string{"fd77::1/64", "fd77::3/64", "fd77::4/64"} {
		ip("-n", tp.host, "addr", "add", a, "dev", tp.dev, "nodad")
	}
	ip("-n", tp.guest, "addr", "add", "10.77.0.2/24", "dev", tp.peer)
	ip("-n", tp.guest, "addr", "add", "fd77::2/64", "dev", tp.peer, "nodad")
	for _, a := range []string{"10.77.0.2", "fd77::2"} {
		ip("-n", tp.host, "neigh", "replace", a, "lladdr", guestMAC, "dev", tp.dev, "nud", "permanent")
	}
	for _, a := range []string{"10.77.0.1", "10.77.0.3", "10.77.0.4", "fd77::1", "fd77::3", "fd77::4"} {
		ip("-n", tp.guest, "neigh", "replace", a, "lladdr", hostMAC, "dev", tp.peer, "nud", "permanent")
	}
	for _, l := range [][2]string{{tp.host, tp.dev}, {tp.host, "lo"}, {tp.guest, tp.peer}, {tp.guest, "lo"}} {
		ip("-n", l[0], "link", "set", l[1], "up")
	}
	// Registered after the namespaces, so it runs before they go away.
	t.Cleanup(func() {
		dir := filepath.Join(tp.filters.root(), tp.dev)
		if _, err := os.Stat(dir); err == nil {
			tp.in(t, tp.host, func() {
				if err := tp.filters.Detach(tp.dev); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			})
		}
	})
	return tp
}

// in runs fn on an OS thread that has joined network namespace ns. Sockets
// created by fn stay in ns afterwards. fn may call t.Fatal.
func (tp *topo) in(t testing.TB, ns string, fn func()) {
	t.Helper()
	var err error
	completed := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		self, e := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if e != nil {
			err = e
			return
		}
		defer unix.Close(self)
		target, e := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if e != nil {
			err = e
			return
		}
		defer unix.Close(target)
		if e := unix.Setns(target, unix.CLONE_NEWNET); e != nil {
			err = e
			return
		}
		defer func() {
			// A thread that cannot go back stays locked and dies with
			// this goroutine.
			if unix.Setns(self, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
		}()
		fn()
		completed = true
	}()
	<-done
	if err != nil {
		t.Fatalf("enter netns %s: %v", ns, err)
	}
	if !completed {
		// fn called t.FailNow (t.Fatal) on the namespace thread; stop the
		// calling goroutine too, as FailNow would have.
		runtime.Goexit()
	}
}

// serve starts TCP servers in ns on the given addresses; each accepted
// connection gets "ok\n" and is closed.
func (tp *topo) serve(t *testing.T, ns string, addrs ...string) {
	t.Helper()
	tp.in(t, ns, func() {
		for _, addr := range addrs {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Errorf("listen %s in %s: %v", addr, ns, err)
				return
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Write([]byte("ok\n"))
					c.Close()
				}
			}()
		}
	})
}

// dial connects from src (an address in ns) to dst and reads the greeting.
func (tp *topo) dial(t testing.TB, ns string, src netip.Addr, dst netip.AddrPort, timeout time.Duration) error {
	t.Helper()
	_, err := tp.dialRetrans(t, ns, src, dst, timeout)
	return err
}

// dialRetrans is dial that also reports how many segments (SYNs included)
// the client retransmitted: a dropped SYN shows up there regardless of how
// slow a loaded machine is.
func (tp *topo) dialRetrans(t testing.TB, ns string, src netip.Addr, dst netip.AddrPort, timeout time.Duration) (uint32, error) {
	t.Helper()
	var (
		err     error
		retrans uint32
	)
	tp.in(t, ns, func() {
		d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		var c net.Conn
		c, err = d.Dial("tcp", dst.String())
		if err != nil {
			return
		}
		defer c.Close()
		raw, e := c.(*net.TCPConn).SyscallConn()
		if e != nil {
			err = e
			return
		}
		raw.Control(func(fd uintptr) {
			info, e := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
			if e != nil {
				err = e
				return
			}
			retrans = info.Total_retrans
		})
		if err != nil {
			return
		}
		c.SetDeadline(time.Now().Add(timeout))
		var b []byte
		b, err = io.ReadAll(c)
		if err == nil && string(b) != "ok\n" {
			err = fmt.Errorf("greeting %q", b)
		}
	})
	return retrans, err
}

const (
	allowTimeout = 3 * time.Second
	denyTimeout  = 400 * time.Millisecond // a dropped SYN is retried after 1 s
)

// expect checks that each (src, dst port) pair connects (open) or times out.
func (tp *topo) expect(t *testing.T, ns string, dst map[bool]netip.Addr, cases []reach) {
	t.Helper()
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			to := allowTimeout
			if !c.open {
				to = denyTimeout
			}
			err := tp.dial(t, ns, c.src, netip.AddrPortFrom(dst[c.src.Is4()], c.port), to)
			switch {
			case c.open && err != nil:
				t.Errorf("%s -> port %d: want connect, got %v", c.src, c.port, err)
			case !c.open && err == nil:
				t.Errorf("%s -> port %d: connected, want dropped", c.src, c.port)
			case !c.open && !isTimeout(err):
				t.Errorf("%s -> port %d: want a timeout (dropped SYN), got %v", c.src, c.port, err)
			}
		}()
	}
	wg.Wait()
}

type reach struct {
	src  netip.Addr
	port uint16
	open bool
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
