package listener

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// freePort returns a TCP port that nothing listens on right now, on the
// given loopback host, so a test can start its server there later.
func freePort(t testing.TB, host string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("find a free port on %s: %v", host, err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// listen listens and closes the listener (and every accepted connection)
// when the test ends.
func listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func portOf(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// serve accepts connections and runs handle on each in its own goroutine;
// connections are closed when the test ends.
func serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go handle(c)
		}
	}()
}

// serveHTTP serves h on ln with net/http until the test ends.
func serveHTTP(t testing.TB, ln net.Listener, h http.HandlerFunc) {
	srv := &http.Server{Handler: h}
	t.Cleanup(func() { srv.Close() })
	go srv.Serve(ln)
}

func wantCode(t *testing.T, err error, code codes.Code, substrings ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v containing %q", code, substrings)
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("got error %v, want code %v", err, code)
	}
	for _, s := range substrings {
		if !strings.Contains(st.Message(), s) {
			t.Errorf("error %q: want it to contain %q", st.Message(), s)
		}
	}
}

func TestWaitHTTPServerStartedLater(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	go func() {
		time.Sleep(150 * time.Millisecond)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Errorf("listen on %d: %v", port, err)
			return
		}
		serveHTTP(t, ln, func(w http.ResponseWriter, r *http.Request) {
			if r.Host == "" || r.Header.Get("Connection") != "close" && !r.Close {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			w.WriteHeader(http.StatusTeapot) // any HTTP response is ready
		})
	}()
	r, err := Wait(context.Background(), Request{Port: port, Protocol: HTTP, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Banner != "HTTP/1.1 418 I'm a teapot" {
		t.Errorf("banner %q, want the status line HTTP/1.1 418 I'm a teapot", r.Banner)
	}
	want := netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", port))
	if r.BindAddress != want || r.DialAddress != want || r.Port != port || r.Protocol != HTTP || r.Source != "sock_diag" {
		t.Errorf("result %+v: want bind and dial %v, port %d, http, sock_diag", r, want, port)
	}
	if r.Elapsed < 150*time.Millisecond {
		t.Errorf("ready after %v, before the server listened", r.Elapsed)
	}
}

// A plain accept loop that never writes satisfies tcp but never ssh (nor http).
func TestWaitSilentAcceptLoop(t *testing.T) {
	ln := listen(t, "tcp", "127.0.0.1:0")
	serve(t, ln, func(c net.Conn) { io.Copy(io.Discard, c) })
	port := portOf(ln)
	ctx := context.Background()
	r, err := Wait(ctx, Request{Port: port, Protocol: TCP, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("tcp: %v", err)
	}
	if r.Banner != "" || r.BindAddress.Port() != uint16(port) {
		t.Errorf("tcp result %+v", r)
	}
	_, err = Wait(ctx, Request{Port: port, Protocol: SSH, Timeout: 300 * time.Millisecond})
	wantCode(t, err, codes.DeadlineExceeded, "listening on 127.0.0.1:", "but no banner", fmt.Sprint(port))
	_, err = Wait(ctx, Request{Port: port, Protocol: HTTP, Timeout: 300 * time.Millisecond})
	wantCode(t, err, codes.DeadlineExceeded, "but no HTTP response")
}

func TestWaitFakeSSHDelayedBanner(t *testing.T) {
	for _, tc := range []struct{ name, preamble string }{
		{"banner only", ""},
		{"lines before banner", "Welcome\r\nno SSH- prefix here\r\n"}, // RFC 4253 §4.2
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, "tcp", "127.0.0.1:0")
			serve(t, ln, func(c net.Conn) {
				time.Sleep(300 * time.Millisecond)
				io.WriteString(c, tc.preamble+"SSH-2.0-FakeSSH_1.0 test\r\n")
				io.Copy(io.Discard, c)
			})
			r, err := Wait(context.Background(), Request{Port: portOf(ln), Protocol: SSH, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if r.Banner != "SSH-2.0-FakeSSH_1.0 test" {
				t.Errorf("banner %q", r.Banner)
			}
			if r.Elapsed < 300*time.Millisecond {
				t.Errorf("ready after %v, before the banner was sent", r.Elapsed)
			}
		})
	}
}

func TestWaitBannerNotSSH(t *testing.T) {
	ln := listen(t, "tcp", "127.0.0.1:0")
	serve(t, ln, func(c net.Conn) {
		io.WriteString(c, "220 mail.example ESMTP\r\n")
		io.Copy(io.Discard, c)
	})
	_, err := Wait(context.Background(), Request{Port: portOf(ln), Protocol: SSH, Timeout: 300 * time.Millisecond})
	wantCode(t, err, codes.DeadlineExceeded, `banner not SSH: got "220 mail.example ESMTP"`)
}

// A server that accepts and closes at once is listening (tcp) but never
// answers (http, ssh).
func TestWaitAcceptThenClose(t *testing.T) {
	ln := listen(t, "tcp", "127.0.0.1:0")
	serve(t, ln, func(c net.Conn) { c.Close() })
	port := portOf(ln)
	ctx := context.Background()
	if _, err := Wait(ctx, Request{Port: port, Protocol: TCP, Timeout: 5 * time.Second}); err != nil {
		t.Fatalf("tcp: %v", err)
	}
	_, err := Wait(ctx, Request{Port: port, Protocol: HTTP, Timeout: 300 * time.Millisecond})
	wantCode(t, err, codes.DeadlineExceeded, "no HTTP response")
	_, err = Wait(ctx, Request{Port: port, Protocol: SSH, Timeout: 300 * time.Millisecond})
	wantCode(t, err, codes.DeadlineExceeded, "no banner")
}

// A server that first closes connections and later serves is waited for.
func TestWaitServerBecomesReady(t *testing.T) {
	ln := listen(t, "tcp", "127.0.0.1:0")
	readyAt := time.Now().Add(200 * time.Millisecond)
	serve(t, ln, func(c net.Conn) {
		if time.Now().Before(readyAt) {
			c.Close()
			return
		}
		io.WriteString(c, "SSH-2.0-Late\r\n")
	})
	r, err := Wait(context.Background(), Request{Port: portOf(ln), Protocol: SSH, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Banner != "SSH-2.0-Late" {
		t.Errorf("banner %q", r.Banner)
	}
}

func TestWaitSlowHTTPServer(t *testing.T) {
	ln := listen(t, "tcp", "127.0.0.1:0")
	serveHTTP(t, ln, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(700 * time.Millisecond)
		io.WriteString(w, "slow hello")
	})
	r, err := Wait(context.Background(), Request{Port: portOf(ln), Protocol: HTTP, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Banner != "HTTP/1.1 200 OK" {
		t.Errorf("banner %q", r.Banner)
	}
}

// Every bind kind, through both kernel interfaces: the probe connects to the
// bound address, or to loopback of the same family for a wildcard.
func TestWaitBindAddresses(t *testing.T) {
	binds := []struct{ network, addr, bind, dial string }{
		{"tcp4", "127.0.0.1:0", "127.0.0.1", "127.0.0.1"},
		{"tcp4", "0.0.0.0:0", "0.0.0.0", "127.0.0.1"},
		{"tcp4", "127.0.0.2:0", "127.0.0.2", "127.0.0.2"}, // a specific address: 127.0.0.1 would be refused
		{"tcp6", "[::1]:0", "::1", "::1"},
		{"tcp6", "[::]:0", "::", "::1"}, // IPv6-only listener
		{"tcp", ":0", "::", "::1"},      // dual-stack
	}
	for _, src := range []Source{SourceSockDiag, SourceProcNet} {
		for _, b := range binds {
			t.Run(fmt.Sprintf("%v/%s", src, b.addr), func(t *testing.T) {
				ln := listen(t, b.network, b.addr)
				serveHTTP(t, ln, func(w http.ResponseWriter, r *http.Request) {})
				port := portOf(ln)
				p := Prober{Source: src}
				for _, proto := range []Protocol{TCP, HTTP} {
					r, err := p.Wait(context.Background(), Request{Port: port, Protocol: proto, Timeout: 5 * time.Second})
					if err != nil {
						t.Fatalf("%v: %v", proto, err)
					}
					bind := netip.AddrPortFrom(netip.MustParseAddr(b.bind), uint16(port))
					dial := netip.AddrPortFrom(netip.MustParseAddr(b.dial), uint16(port))
					if r.BindAddress != bind || r.DialAddress != dial || r.Source != src.String() {
						t.Errorf("%v: bind %v dial %v source %s; want %v, %v, %v", proto, r.BindAddress, r.DialAddress, r.Source, bind, dial, src)
					}
				}
			})
		}
	}
}

func TestWaitNothingListening(t *testing.T) {
	port := freePort(t, "127.0.0.1")
	for _, src := range []Source{SourceSockDiag, SourceProcNet} {
		p := Prober{Source: src}
		_, err := p.Wait(context.Background(), Request{Port: port, Protocol: TCP, Timeout: 200 * time.Millisecond})
		wantCode(t, err, codes.DeadlineExceeded, fmt.Sprintf("nothing listening on port %d", port), "tcp listener")
	}
	// The caller's deadline counts as well.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := Wait(ctx, Request{Port: port, Protocol: SSH, Timeout: time.Hour})
	wantCode(t, err, codes.DeadlineExceeded, "nothing listening")
}

func TestWaitCancel(t *testing.T) {
	silent := listen(t, "tcp", "127.0.0.1:0")
	serve(t, silent, func(c net.Conn) { io.Copy(io.Discard, c) })
	for _, tc := range []struct {
		name string
		port int
		seen string
	}{
		{"while polling", freePort(t, "127.0.0.1"), "nothing listening"},
		{"while reading a banner", portOf(silent), "no banner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := Wait(ctx, Request{Port: tc.port, Protocol: SSH, Timeout: time.Hour})
				done <- err
			}()
			time.Sleep(100 * time.Millisecond)
			cancel()
			select {
			case err := <-done:
				wantCode(t, err, codes.Canceled, tc.seen)
			case <-time.After(10 * time.Second):
				t.Fatal("Wait did not return after its context was cancelled")
			}
		})
	}
}

func TestWaitInvalidRequest(t *testing.T) {
	for _, req := range []Request{
		{Port: 0},
		{Port: 65536},
		{Port: -1},
		{Port: 80, Protocol: Protocol(7)},
		{Port: 80, Timeout: -time.Second},
	} {
		_, err := Wait(context.Background(), req)
		wantCode(t, err, codes.InvalidArgument, "listener")
	}
	for _, s := range []string{"tcp", "HTTP", "ssh"} {
		p, err := ParseProtocol(s)
		if err != nil || !strings.EqualFold(p.String(), s) {
			t.Errorf("ParseProtocol(%q) = %v, %v", s, p, err)
		}
	}
	_, err := ParseProtocol("udp")
	wantCode(t, err, codes.InvalidArgument, `"udp"`)
}
