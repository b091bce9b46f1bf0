package vsockbackend

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/vhostuser"
)

// rawTx publishes a hand-written tx chain. descs[i].next is used verbatim
// unless relNext is set, in which case it is an index into descs.
type rawDesc struct {
	addr    uint64
	length  uint32
	flags   uint16
	next    uint16
	relNext bool
}

func (g *fakeGuest) rawTx(t *testing.T, descs []rawDesc) {
	t.Helper()
	g.txMu.Lock()
	defer g.txMu.Unlock()
	ids, err := g.tx.Reserve(len(descs))
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range descs {
		next := d.next
		if d.relNext {
			next = ids[d.next]
		}
		g.tx.SetDesc(ids[i], d.addr, d.length, d.flags, next)
	}
	g.tx.Publish(ids[0])
	g.tx.Kick()
}

// scratch returns guest memory holding a packet header (and payload room).
func (g *fakeGuest) scratch(t *testing.T, h Header, size int) uint64 {
	gpa, err := g.mem.Alloc(uint64(size), 16)
	if err != nil {
		t.Fatal(err)
	}
	h.Put(g.mem.Bytes(gpa, HeaderSize))
	return gpa
}

func waitCounter(t *testing.T, what string, get func() uint64, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for get() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want >= %d", what, get(), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestHostileGuest(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	serveEcho(g.Listen(10000))
	stillWorks := func(step string) {
		t.Helper()
		c := e.hostDialRetry(t, 10000)
		defer c.Close()
		io.WriteString(c, "ping")
		buf := make([]byte, 4)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("after %s: echo failed: %q %v", step, buf, err)
		}
	}
	stillWorks("start")
	st := &e.b.stats
	good := Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 999, DstPort: 1234, Type: TypeStream, Op: OpRW, Len: 16}
	hdr := g.scratch(t, good, 4096)
	memEnd := g.mem.GPA + uint64(len(g.mem.Data))
	table := g.scratch(t, Header{}, 256) // an indirect table
	indirectTo := func(entries ...[4]uint64) uint64 {
		b := g.mem.Bytes(table, 16*len(entries))
		for i, e := range entries {
			binary.LittleEndian.PutUint64(b[16*i:], e[0])
			binary.LittleEndian.PutUint32(b[16*i+8:], uint32(e[1]))
			binary.LittleEndian.PutUint16(b[16*i+12:], uint16(e[2]))
			binary.LittleEndian.PutUint16(b[16*i+14:], uint16(e[3]))
		}
		return table
	}

	badChains := []struct {
		name  string
		descs []rawDesc
	}{
		{"address outside guest memory", []rawDesc{{addr: 0x1000, length: 60}}},
		{"address past the end", []rawDesc{{addr: memEnd - 8, length: 60}}},
		{"length past the end", []rawDesc{{addr: hdr, length: 0xffffffff}}},
		{"self loop", []rawDesc{{addr: hdr, length: 44, flags: vhostuser.DescFNext, next: 0, relNext: true}}},
		{"two-descriptor loop", []rawDesc{
			{addr: hdr, length: 44, flags: vhostuser.DescFNext, next: 1, relNext: true},
			{addr: hdr, length: 16, flags: vhostuser.DescFNext, next: 0, relNext: true}}},
		{"next out of range", []rawDesc{{addr: hdr, length: 44, flags: vhostuser.DescFNext, next: 5000}}},
		{"indirect bad size", []rawDesc{{addr: table, length: 20, flags: vhostuser.DescFIndirect}}},
		{"indirect table outside memory", []rawDesc{{addr: memEnd + 4096, length: 32, flags: vhostuser.DescFIndirect}}},
		{"indirect huge", []rawDesc{{addr: table, length: 1 << 30, flags: vhostuser.DescFIndirect}}},
		{"indirect with next", []rawDesc{{addr: table, length: 16, flags: vhostuser.DescFIndirect | vhostuser.DescFNext, next: 0, relNext: true}}},
		{"nested indirect", []rawDesc{{addr: indirectTo([4]uint64{table, 16, vhostuser.DescFIndirect, 0}), length: 16, flags: vhostuser.DescFIndirect}}},
		{"readable after writable", []rawDesc{
			{addr: hdr, length: 44, flags: vhostuser.DescFNext | vhostuser.DescFWrite, next: 1, relNext: true},
			{addr: hdr, length: 16}}},
	}
	want := uint64(0)
	for _, bc := range badChains {
		g.rawTx(t, bc.descs)
		want++
		waitCounter(t, "BadChains after "+bc.name, st.BadChains.Load, want)
	}
	stillWorks("bad chains")

	// A loop inside an indirect table (table reused from above).
	indirectTo([4]uint64{hdr, 44, vhostuser.DescFNext, 1}, [4]uint64{hdr, 16, vhostuser.DescFNext, 0})
	g.rawTx(t, []rawDesc{{addr: table, length: 32, flags: vhostuser.DescFIndirect}})
	want++
	waitCounter(t, "BadChains after indirect loop", st.BadChains.Load, want)

	badPackets := []struct {
		name string
		h    Header
		n    uint32 // chain bytes
	}{
		{"short header", good, 20},
		{"len beyond the chain", good, 44 + 8},
		{"len beyond any packet", Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 1, DstPort: 2, Type: TypeStream, Op: OpRW, Len: 1 << 30}, 4096},
		{"wrong source cid", Header{SrcCID: 77, DstCID: HostCID, Type: TypeStream, Op: OpRequest}, 44},
		{"seqpacket", Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 5, DstPort: 6, Type: TypeSeqpacket, Op: OpRequest}, 44},
		{"unknown op", Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 5, DstPort: 6, Type: TypeStream, Op: 99}, 44},
		{"request with payload", Header{SrcCID: testCID, DstCID: HostCID, SrcPort: 5, DstPort: 6, Type: TypeStream, Op: OpRequest, Len: 4}, 48},
	}
	wantBad := uint64(0)
	for _, bp := range badPackets {
		gpa := g.scratch(t, bp.h, int(bp.n)+16)
		g.rawTx(t, []rawDesc{{addr: gpa, length: bp.n}})
		wantBad++
		waitCounter(t, "BadPackets after "+bp.name, st.BadPackets.Load, wantBad)
	}
	stillWorks("bad packets")

	// A guest that ignores the back end's credit is reset.
	hostLn, err := net.Listen("unix", e.cfg.HybridSocket+"_6000")
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	go func() {
		c, err := hostLn.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(10 * time.Second) // never read
		}
	}()
	gc, err := g.Dial(6000)
	if err != nil {
		t.Fatal(err)
	}
	// Ignore credit until the back end's buffer and the host socket's
	// are both full.
	chunk := make([]byte, guestMaxTxPkt)
	for range (16 << 20) / guestMaxTxPkt {
		g.mu.Lock()
		h := gc.hdr(OpRW)
		closed := gc.state == gClosed
		g.mu.Unlock()
		if closed {
			break
		}
		g.send(h, chunk)
	}
	if !gc.WaitClosed(5 * time.Second) {
		t.Fatal("credit violation did not reset the connection")
	}
	stillWorks("credit violation")
	if n := st.BadChains.Load(); n != want {
		t.Errorf("BadChains = %d, want %d", n, want)
	}
}

func TestHostileRxBuffers(t *testing.T) {
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{rxSpare: 8})
	serveEcho(g.Listen(10000))
	memEnd := g.mem.GPA + uint64(len(g.mem.Data))
	small, err := g.mem.Alloc(64, 16)
	if err != nil {
		t.Fatal(err)
	}
	bad := []rawDesc{
		{addr: 0x1000, length: 4096, flags: vhostuser.DescFWrite},                    // outside memory
		{addr: memEnd - 100, length: 4096, flags: vhostuser.DescFWrite},              // runs past the end
		{addr: small, length: 20, flags: vhostuser.DescFWrite},                       // shorter than a header
		{addr: small, length: 64},                                                    // device-readable rx buffer
		{addr: small, length: 64, flags: vhostuser.DescFWrite | vhostuser.DescFNext}, // loop (next = itself)
	}
	g.mu.Lock()
	var heads []uint16
	for _, d := range bad {
		ids, err := g.rx.Reserve(1)
		if err != nil {
			g.mu.Unlock()
			t.Fatal(err)
		}
		g.rx.SetDesc(ids[0], d.addr, d.length, d.flags, ids[0])
		g.junkRx[ids[0]] = true
		heads = append(heads, ids[0])
	}
	// The bad chains sit in the avail ring behind the good buffers.
	for _, h := range heads {
		g.rx.Publish(h)
	}
	g.mu.Unlock()

	// Traffic makes the device pop every buffer, the bad ones included.
	for i := range 3 {
		c := e.hostDialRetry(t, 10000)
		msg := randBytes(200 << 10)
		go c.Write(msg)
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("echo %d with bad rx buffers in the ring: %v", i, err)
		}
		c.Close()
	}
	waitCounter(t, "BadChains", e.b.stats.BadChains.Load, uint64(len(bad)))
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, h := range heads {
		if n, ok := g.junkUsed[h]; !ok || n != 0 {
			t.Errorf("bad rx chain %d: returned=%v with %d bytes, want returned with 0", h, ok, n)
		}
	}
	if len(g.violations) > 0 {
		t.Errorf("violations: %q", g.violations)
	}
}

// A ring whose avail index runs past its size cannot be trusted: the
// session ends with an error instead of reading garbage.
func TestBrokenRingEndsSession(t *testing.T) {
	for _, name := range []string{"avail index jump", "head out of range"} {
		t.Run(name, func(t *testing.T) {
			e := startBackend(t)
			g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
			g.txMu.Lock()
			if name == "avail index jump" {
				g.tx.SetAvailIdx(g.tx.AvailIdx() + 1000)
			} else {
				g.tx.Publish(60000)
			}
			g.tx.Kick()
			g.txMu.Unlock()
			select {
			case err := <-e.serveC:
				if err == nil {
					t.Fatal("Serve returned nil for a corrupt ring")
				}
				t.Logf("Serve: %v", err)
				e.serveC <- nil
			case <-time.After(5 * time.Second):
				t.Fatal("Serve did not end on a corrupt ring")
			}
		})
	}
}

// A guest that opens connections without end is refused beyond maxConns,
// and the host side too; closing some makes room again.
func TestConnectionLimit(t *testing.T) {
	old := maxConns
	maxConns = 8
	defer func() { maxConns = old }()
	e := startBackend(t)
	g := newFakeGuest(t, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln, err := net.Listen("unix", e.cfg.HybridSocket+"_6000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var hostSide []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			hostSide = append(hostSide, c)
		}
	}()
	var conns []*gconn
	for i := range 8 {
		c, err := g.Dial(6000)
		if err != nil {
			t.Fatalf("connection %d within the limit: %v", i, err)
		}
		conns = append(conns, c)
	}
	if _, err := g.Dial(6000); err == nil {
		t.Fatal("guest connection beyond the limit accepted")
	}
	g.Listen(10000)
	if _, err := e.hostDial(10000); err == nil {
		t.Fatal("host connection beyond the limit accepted")
	}
	conns[0].Reset()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := g.Dial(6000); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no room after closing a connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
