package transport

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	good := map[string]Addr{
		"vsock://3:10000":          {Scheme: SchemeVsock, CID: 3, Port: 10000},
		"vsock://:10000":           {Scheme: SchemeVsock, CID: AnyCID, Port: 10000},
		"hvsock:///run/vm.sock:52": {Scheme: SchemeHvsock, Path: "/run/vm.sock", Port: 52},
		"unix:///tmp/a.sock":       {Scheme: SchemeUnix, Path: "/tmp/a.sock"},
	}
	for in, want := range good {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("String() = %q, want %q", got.String(), in)
		}
	}
	for _, in := range []string{"", "tcp://1.2.3.4:5", "vsock://3", "vsock://x:1", "vsock://3:y",
		"hvsock://rel.sock:5", "hvsock:///a.sock", "unix://", "/tmp/a.sock"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}

func TestDialRefusesHostCID(t *testing.T) {
	for _, a := range []string{"vsock://2:10000", "vsock://1:10000", "vsock://:10000"} {
		if _, err := Dial(context.Background(), a); err == nil || !strings.Contains(err.Error(), "CID") {
			t.Errorf("Dial(%s) = %v, want a CID error", a, err)
		}
	}
}

// fakeVMM serves the hybrid vsock front end on a unix socket the way a VMM
// does: read "CONNECT <port>\n", answer with reply(port), then echo.
func fakeVMM(t *testing.T, reply func(port int) string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vm.vsock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				var port int
				if _, err := fmt.Sscanf(line, "CONNECT %d\n", &port); err != nil {
					return
				}
				r := reply(port)
				if r == "" {
					return // close without reply: nothing listens on the guest port
				}
				io.WriteString(c, r)
				io.Copy(c, br)
			}(c)
		}
	}()
	return path
}

func roundTrip(t *testing.T, c net.Conn) {
	t.Helper()
	defer c.Close()
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != "ping\n" {
		t.Fatalf("echo got %q, %v", got, err)
	}
}

func TestHybridFirecrackerReply(t *testing.T) {
	// Firecracker answers with the host-side port it allocated.
	path := fakeVMM(t, func(int) string { return "OK 1073741824\n" })
	c, err := Dial(context.Background(), fmt.Sprintf("hvsock://%s:10000", path))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
}

func TestHybridRustVMMReply(t *testing.T) {
	// rust-vmm's vhost-device-vsock answers with the guest port.
	path := fakeVMM(t, func(port int) string { return fmt.Sprintf("OK %d\n", port) })
	c, err := Dial(context.Background(), fmt.Sprintf("hvsock://%s:10000", path))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
}

func TestHybridRefusingRetriesUntilDeadline(t *testing.T) {
	path := fakeVMM(t, func(int) string { return "" })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Dial(ctx, fmt.Sprintf("hvsock://%s:10000", path))
	if err == nil || !strings.Contains(err.Error(), "no reply to CONNECT 10000") {
		t.Fatalf("got %v", err)
	}
	if strings.Count(err.Error(), "attempts") != 1 || time.Since(start) > 3*time.Second {
		t.Fatalf("unexpected: %v after %v", err, time.Since(start))
	}
}

func TestHybridGarbageFailsAtOnce(t *testing.T) {
	for _, reply := range []string{"NO\n", "HTTP/1.1 400 Bad Request\r\n", strings.Repeat("x", 1000)} {
		path := fakeVMM(t, func(int) string { return reply })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		_, err := Dial(ctx, fmt.Sprintf("hvsock://%s:7", path))
		cancel()
		if err == nil || !strings.Contains(err.Error(), "hybrid vsock handshake") {
			t.Fatalf("reply %q: got %v", reply[:min(len(reply), 20)], err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("reply %q: a permanent error was retried (%v)", reply[:min(len(reply), 20)], time.Since(start))
		}
	}
}

func TestHybridSilentVMMTimesOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "silent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accept, never answer
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = DialWith(ctx, fmt.Sprintf("hvsock://%s:7", path), DialOptions{HandshakeTimeout: 100 * time.Millisecond})
	if err == nil {
		t.Fatal("dial to a silent VMM succeeded")
	}
}

func TestUnixListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.sock")
	l, err := Listen("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen("unix://" + path); err == nil {
		t.Fatal("second listener on a live socket succeeded")
	}
	// Simulate a crash: the socket file stays, nobody serves it.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen("unix://" + path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l2.Close()
	go func() {
		c, err := l2.Accept()
		if err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	c, err := Dial(context.Background(), "unix://"+path)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
}
