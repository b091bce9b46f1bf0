package listener

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"
)

func TestParseProcNetTCP(t *testing.T) {
	// Lines as x86-64 and arm64 (little-endian) kernels print them.
	v4 := []byte(`  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1576 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1577 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1578 1 0000000000000000 100 0 0 10 0
   3: 0A01A8C0:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1579 1 0000000000000000 100 0 0 10 0
`)
	v6 := []byte(`  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2000 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 100 0 0 10 0
   3: 000080FE00000000FF005450003512FE:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 100 0 0 10 0
`)
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("sample lines are little-endian kernel output")
	}
	addrs := func(ls []Listening) []string {
		var s []string
		for _, l := range ls {
			s = append(s, l.Addr.String())
		}
		return s
	}
	got, err := parseProcNetTCP(v4, 8080)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"127.0.0.1:8080", "0.0.0.0:8080"}; !slices.Equal(addrs(got), want) {
		t.Errorf("v4 port 8080: got %v, want %v (established socket must not count)", addrs(got), want)
	}
	got, _ = parseProcNetTCP(v4, 22)
	if want := []string{"192.168.1.10:22"}; !slices.Equal(addrs(got), want) {
		t.Errorf("v4 port 22: got %v, want %v", addrs(got), want)
	}
	got, err = parseProcNetTCP(v6, 8080)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"[::1]:8080", "[::]:8080", "127.0.0.1:8080"}; !slices.Equal(addrs(got), want) {
		t.Errorf("v6 port 8080: got %v, want %v", addrs(got), want)
	}
	got, _ = parseProcNetTCP(v6, 80)
	if want := []string{"[fe80::5054:ff:fe12:3500]:80"}; !slices.Equal(addrs(got), want) {
		t.Errorf("v6 port 80: got %v, want %v", addrs(got), want)
	}
	if got, _ := parseProcNetTCP(v4, 9); len(got) != 0 {
		t.Errorf("port 9: got %v, want none", addrs(got))
	}
	if _, err := parseProcNetTCP([]byte("hdr\n 0: 0100007F 00000000:0000 0A\n"), 1); err == nil {
		t.Error("address without port: want an error")
	}
}

// TestFinders checks both kernel interfaces against real listening sockets
// of every bind kind, and that they agree.
func TestFinders(t *testing.T) {
	binds := []struct{ network, addr, want string }{
		{"tcp4", "127.0.0.1:0", "127.0.0.1"},
		{"tcp4", "0.0.0.0:0", "0.0.0.0"},
		{"tcp6", "[::1]:0", "::1"},
		{"tcp6", "[::]:0", "::"}, // IPv6-only (Go sets IPV6_V6ONLY for tcp6)
		{"tcp", ":0", "::"},      // dual-stack
	}
	for _, src := range []Source{SourceSockDiag, SourceProcNet, SourceAuto} {
		f, err := OpenFinder(src)
		if err != nil {
			t.Fatalf("open %v: %v", src, err)
		}
		defer f.Close()
		for _, b := range binds {
			ln, err := net.Listen(b.network, b.addr)
			if err != nil {
				t.Fatalf("listen %s %s: %v", b.network, b.addr, err)
			}
			port := uint16(ln.Addr().(*net.TCPAddr).Port)
			// An established connection on the same port must not count.
			want := netip.AddrPortFrom(netip.MustParseAddr(b.want), port)
			c, err := net.Dial("tcp", dialAddr(Listening{Addr: want}).String())
			if err != nil {
				t.Fatalf("dial %s: %v", ln.Addr(), err)
			}
			ls, err := f.Listeners(port)
			c.Close()
			ln.Close()
			if err != nil {
				t.Fatalf("%v: listeners on %d: %v", src, port, err)
			}
			if len(ls) != 1 || ls[0].Addr != want {
				t.Errorf("%v: %s %s: got %v, want exactly [%v]", src, b.network, b.addr, ls, want)
			}
			ls, err = f.Listeners(port)
			if err != nil || len(ls) != 0 {
				t.Errorf("%v: after close of port %d: got %v, %v; want none", src, port, ls, err)
			}
		}
		if f.Name() != map[Source]string{SourceSockDiag: "sock_diag", SourceProcNet: "procnet", SourceAuto: "sock_diag"}[src] {
			t.Errorf("%v: finder name %q", src, f.Name())
		}
	}
}

// SourceAuto falls back to /proc/net for good once sock_diag fails (as it
// does on a guest kernel without inet_diag).
func TestAutoFinderFallback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sd, err := openSockDiag()
	if err != nil {
		t.Fatal(err)
	}
	sd.Close()
	sd.fd = -1 // every query now fails with EBADF
	a := &autoFinder{sd: sd}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ls, err := a.Listeners(port)
	if err != nil || len(ls) != 1 || ls[0].Addr.String() != ln.Addr().String() {
		t.Fatalf("after sock_diag failed: %v, %v; want [%v] from procnet", ls, err, ln.Addr())
	}
	if a.Name() != "procnet" {
		t.Errorf("name %q after fallback, want procnet", a.Name())
	}
}
