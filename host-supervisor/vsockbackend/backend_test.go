package vsockbackend

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/vhostuser/vhostusertest"
)

const testCID = 3

type testEnv struct {
	b      *Backend
	cfg    Config
	serveC chan error
	cancel context.CancelFunc
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("VSOCK_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startBackend runs a Backend serving one front end.
func startBackend(t testing.TB) *testEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "vsb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := Config{GuestCID: testCID, VhostUserSocket: filepath.Join(dir, "vu.sock"), HybridSocket: filepath.Join(dir, "vm.vsock"), Logger: testLogger(t)}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &testEnv{b: b, cfg: cfg, serveC: make(chan error, 1), cancel: cancel}
	go func() { e.serveC <- b.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-e.serveC:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
		b.Close()
	})
	return e
}

// hostDial speaks the hybrid protocol: nil error means "OK" came back.
func (e *testEnv) hostDial(port uint32) (net.Conn, error) {
	c, err := net.Dial("unix", e.cfg.HybridSocket)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(c, "CONNECT %d\n", port)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReaderSize(c, 16).ReadString('\n')
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("no OK: %w", err)
	}
	if !strings.HasPrefix(line, "OK ") {
		c.Close()
		return nil, fmt.Errorf("reply %q", line)
	}
	return c, nil
}

// hostDialRetry retries while the guest is not up yet.
func (e *testEnv) hostDialRetry(t testing.TB, port uint32) net.Conn {
	t.Helper()
	var err error
	for range 200 {
		var c net.Conn
		if c, err = e.hostDial(port); err == nil {
			return c
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("hybrid dial port %d: %v", port, err)
	return nil
}

func checkClean(t *testing.T, g *fakeGuest, e *testEnv) {
	t.Helper()
	if v := g.Violations(); len(v) > 0 {
		t.Errorf("back end violated the protocol: %q", v)
	}
	if n := e.b.stats.BadChains.Load() + e.b.stats.BadPackets.Load(); n > 0 {
		t.Errorf("back end rejected %d chains/packets of a well-behaved guest", n)
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// echo serves one guest connection: everything read is written back.
func echo(c *gconn) {
	buf := make([]byte, 20000)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			c.CloseWrite()
			return
		}
	}
}

func serveEcho(ln <-chan *gconn) {
	go func() {
		for c := range ln {
			go echo(c)
		}
	}()
}

func TestHostToGuestEcho(t *testing.T) {
	for _, o := range []guestOpts{{}, {noEventIdx: true}, {rxBufSize: 60000}} {
		t.Run(fmt.Sprintf("%+v", o), func(t *testing.T) { testHostToGuestEcho(t, o) })
	}
}

func testHostToGuestEcho(t *testing.T, o guestOpts) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, o)
	serveEcho(g.Listen(10000))

	c := e.hostDialRetry(t, 10000)
	defer c.Close()
	data := randBytes(3 << 20) // many times both credit windows
	go func() {
		c.Write(data)
		c.(*net.UnixConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo returned %d bytes, sha %x; sent %d, sha %x", len(got), sha256.Sum256(got), len(data), sha256.Sum256(data))
	}
	checkClean(t, g, e)
}

func TestHybridReplyAndEarlyData(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln := g.Listen(10000)
	c, err := net.Dial("unix", e.cfg.HybridSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The request line and the first payload bytes in one write.
	fmt.Fprintf(c, "CONNECT 10000\nhello")
	gc := <-ln
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK ") {
		t.Fatalf("reply %q, %v", line, err)
	}
	var port uint32
	if _, err := fmt.Sscanf(line, "OK %d\n", &port); err != nil || port < firstHostPort {
		t.Fatalf("reply %q: want OK <host port>", line)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(gc, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("guest read %q, %v", buf, err)
	}
	checkClean(t, g, e)
}

func TestGuestToHost(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln, err := net.Listen("unix", e.cfg.HybridSocket+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.(*net.UnixConn).CloseWrite() }()
		}
	}()
	gc, err := g.Dial(5000)
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(2 << 20)
	go func() { gc.Write(data); gc.CloseWrite() }()
	got, err := io.ReadAll(gc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo returned %d of %d bytes or different bytes", len(got), len(data))
	}
	// Both sides shut down: the back end resets the connection.
	if !gc.WaitClosed(5 * time.Second) {
		t.Fatal("connection not closed after both directions shut down")
	}
	checkClean(t, g, e)
}

func TestNoListener(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	// Guest → host with no host listener: RST.
	if _, err := g.Dial(4444); !errors.Is(err, errRefused) {
		t.Fatalf("guest dial to a host port without listener: %v, want refused", err)
	}
	// Host → guest with no guest listener: closed without a reply.
	if _, err := e.hostDial(7777); err == nil || !strings.Contains(err.Error(), "no OK") {
		t.Fatalf("host dial to a guest port without listener: %v, want close without reply", err)
	}
	// Malformed request lines are closed without a reply too.
	for _, req := range []string{"CONNECT\n", "CONNECT x\n", "HELLO 1\n", strings.Repeat("A", 200)} {
		c, err := net.Dial("unix", e.cfg.HybridSocket)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, req)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 10)); n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("request %q: read %d, %v; want EOF", req, n, err)
		}
		c.Close()
	}
	checkClean(t, g, e)
	if e.b.stats.RSTsSent.Load() < 1 {
		t.Errorf("RSTs sent %d, want at least 1", e.b.stats.RSTsSent.Load())
	}
}

func TestShutdownBothWays(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln := g.Listen(10000)
	c := e.hostDialRetry(t, 10000)
	gc := <-ln

	// Host half-closes: the guest reads the data then EOF, and can still answer.
	io.WriteString(c, "request")
	c.(*net.UnixConn).CloseWrite()
	got, err := io.ReadAll(gc)
	if err != nil || string(got) != "request" {
		t.Fatalf("guest read %q, %v", got, err)
	}
	if _, err := gc.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	gc.Close() // SHUTDOWN(RCV|SEND)
	got, err = io.ReadAll(c)
	if err != nil || string(got) != "reply" {
		t.Fatalf("host read %q, %v", got, err)
	}
	if !gc.WaitClosed(5 * time.Second) {
		t.Fatal("guest connection not reset after close")
	}
	c.Close()
	waitNoConns(t, e)
	checkClean(t, g, e)
}

func waitNoConns(t *testing.T, e *testEnv) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := e.b.numConns()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("back end still tracks %d connections", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReset(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln := g.Listen(10000)

	// Guest resets: the host side sees the connection end.
	c := e.hostDialRetry(t, 10000)
	gc := <-ln
	gc.Reset()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("host read succeeded after guest RST")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("host connection still open after guest RST")
	}
	c.Close()

	// Host closes while the guest writes: the guest gets RST.
	c = e.hostDialRetry(t, 10000)
	gc = <-ln
	c.Close()
	werr := make(chan error, 1)
	go func() {
		for {
			if _, err := gc.Write(make([]byte, 8192)); err != nil {
				werr <- err
				return
			}
		}
	}()
	select {
	case <-werr:
	case <-time.After(10 * time.Second):
		t.Fatal("guest writes to a closed host connection never failed")
	}
	if !gc.WaitClosed(5 * time.Second) {
		t.Fatal("guest connection not reset")
	}
	waitNoConns(t, e)
	checkClean(t, g, e)
}

// A host reader that never reads and a guest reader that never reads stall
// only their own connections.
func TestSlowConnectionsDoNotBlockOthers(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln := g.Listen(10000)
	hostLn, err := net.Listen("unix", e.cfg.HybridSocket+"_6000")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	stuck := make(chan net.Conn, 1)
	go func() {
		c, err := hostLn.Accept()
		if err == nil {
			stuck <- c // never read
		}
	}()

	// Guest → host into a host that never reads.
	slowOut, err := g.Dial(6000)
	if err != nil {
		t.Fatal(err)
	}
	go slowOut.Write(make([]byte, 8<<20))
	// Host → guest into a guest that never reads.
	slowIn := e.hostDialRetry(t, 10000)
	<-ln
	go slowIn.Write(make([]byte, 8<<20))
	defer slowIn.Close()
	time.Sleep(200 * time.Millisecond) // let both fill their windows

	serveEcho(ln)
	for i := range 5 {
		c := e.hostDialRetry(t, 10000)
		msg := randBytes(300 << 10)
		go c.Write(msg)
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo %d beside stalled connections: %v", i, err)
		}
		c.Close()
	}
	e.b.mu.Lock()
	e.b.mu.Unlock()
	sc := <-stuck
	sc.Close()
	checkClean(t, g, e)
}

func TestConcurrent256(t *testing.T) {
	for _, o := range []guestOpts{{}, {noEventIdx: true}} {
		t.Run(fmt.Sprintf("%+v", o), func(t *testing.T) { testConcurrent256(t, o) })
	}
}

func testConcurrent256(t *testing.T, o guestOpts) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, o)
	serveEcho(g.Listen(10000))
	e.hostDialRetry(t, 10000).Close()
	const n = 256
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := e.hostDial(10000)
			if err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
				return
			}
			defer c.Close()
			msg := randBytes(64<<10 + i)
			go func() { c.Write(msg); c.(*net.UnixConn).CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("conn %d: %d of %d bytes back, %v", i, len(got), len(msg), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitNoConns(t, e)
	checkClean(t, g, e)
}

// The front end going away ends Serve and every connection.
func TestFrontEndDisconnect(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln := g.Listen(10000)
	c := e.hostDialRetry(t, 10000)
	<-ln
	g.Close()
	select {
	case err := <-e.serveC:
		if err != nil {
			t.Fatalf("Serve after front-end disconnect: %v", err)
		}
		e.serveC <- nil
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the front end disconnected")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("host connection after front-end disconnect: %v, want EOF", err)
	}
}

// Between front ends a hybrid client is turned away at once, and Serve
// serves the next front end (a restarted QEMU).
func TestSessionsInSequence(t *testing.T) {
	e := startBackend(t)
	// No front end yet: closed without a reply, promptly.
	start := time.Now()
	if _, err := e.hostDial(10000); err == nil {
		t.Fatal("hybrid dial succeeded with no guest")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("turning a client away took %v", d)
	}
	for round := range 2 {
		g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
		serveEcho(g.Listen(10000))
		c := e.hostDialRetry(t, 10000)
		io.WriteString(c, "again")
		buf := make([]byte, 5)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		c.Close()
		g.Close()
		if err := <-e.serveC; err != nil {
			t.Fatalf("round %d: Serve: %v", round, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		go func() { e.serveC <- e.b.Serve(ctx) }()
	}
}

// Close ends the session being served and the host connections with it.
func TestCloseEndsSession(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln := g.Listen(10000)
	c := e.hostDialRetry(t, 10000)
	<-ln
	e.b.Close()
	select {
	case err := <-e.serveC:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Serve after Close: %v, want net.ErrClosed", err)
		}
		e.serveC <- nil
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after Close")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("host connection after Close: %v, want EOF", err)
	}
	if _, err := os.Stat(e.cfg.HybridSocket); !os.IsNotExist(err) {
		t.Fatalf("hybrid socket file after Close: %v", err)
	}
}

// QEMU's "stop" stops the rings with GET_VRING_BASE and "cont" restarts
// them: connections survive, and a stream crossing the pause is intact.
func TestStopContDuringStream(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	serveEcho(g.Listen(10000))
	c := e.hostDialRetry(t, 10000)
	defer c.Close()
	stop := func() [2]uint32 {
		var bases [2]uint32
		for i := range 2 {
			var err error
			if bases[i], err = g.fe.GetVringBase(uint32(i)); err != nil {
				t.Fatal(err)
			}
		}
		return bases
	}
	cont := func(bases [2]uint32) {
		for i, q := range []*vhostusertest.DriverQueue{g.rx, g.tx} {
			if err := g.fe.RestartQueue(q, bases[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Stopped before the stream starts: nothing may come back meanwhile.
	bases := stop()
	data := randBytes(4 << 20)
	go func() {
		c.Write(data)
		c.(*net.UnixConn).CloseWrite()
	}()
	got := make(chan []byte, 1)
	var echoed atomic.Int64
	go func() {
		var all []byte
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			all = append(all, buf[:n]...)
			echoed.Add(int64(n))
			if err != nil {
				got <- all
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	if n := echoed.Load(); n != 0 {
		t.Fatalf("%d bytes echoed while the rings were stopped", n)
	}
	cont(bases)
	for range 3 { // and a few more pauses, wherever the stream is
		time.Sleep(5 * time.Millisecond)
		bases := stop()
		time.Sleep(5 * time.Millisecond)
		cont(bases)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, data) {
			t.Fatalf("stream across stop/cont: %d of %d bytes back, or different bytes", len(b), len(data))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("stream did not finish after stop/cont")
	}
	checkClean(t, g, e)
}

// A guest that never answers a connect: the client is closed without a
// reply after connectTimeout, and the guest gets a RST for the request.
func TestGuestDoesNotAnswer(t *testing.T) {
	old := connectTimeout
	connectTimeout = 200 * time.Millisecond
	defer func() { connectTimeout = old }()
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	g.Listen(10000)
	g.mu.Lock()
	g.silent = true
	g.mu.Unlock()
	start := time.Now()
	if _, err := e.hostDial(10000); err == nil || !strings.Contains(err.Error(), "no OK") {
		t.Fatalf("dial to a silent guest: %v, want closed without reply", err)
	}
	if d := time.Since(start); d < connectTimeout || d > 5*time.Second {
		t.Fatalf("closed after %v, want about %v", d, connectTimeout)
	}
	waitCounter(t, "RSTsSent", e.b.stats.RSTsSent.Load, 1)
	waitNoConns(t, e)
}

// A host listener that accepts and closes at once: the guest reads EOF
// and its writes end in RST.
func TestHostClosesAtOnce(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln, err := net.Listen("unix", e.cfg.HybridSocket+"_7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	gc, err := g.Dial(7000)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(gc); err != nil || len(b) != 0 {
		t.Fatalf("guest read %d bytes, %v; want EOF", len(b), err)
	}
	// Only a write tells a half-close from a close.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := gc.Write([]byte("x")); err != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if !gc.WaitClosed(5 * time.Second) {
		t.Fatal("connection to a closed host socket never reset")
	}
	waitNoConns(t, e)
	checkClean(t, g, e)
}
