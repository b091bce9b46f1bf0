package vsockbackend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/vhostuser"
	"github.com/sailbox/sailbox/host-supervisor/vhostuser/vhostusertest"
)

// fakeGuest is a minimal virtio-vsock driver: guest memory in a memfd,
// rx/tx split rings, vhost-user set up the way QEMU does it, and stream
// connections with credit flow control, like the Linux guest driver.
type fakeGuest struct {
	t   testing.TB
	cid uint64
	mem *vhostusertest.GuestMemory
	fe  *vhostusertest.Frontend
	rx  *vhostusertest.DriverQueue
	tx  *vhostusertest.DriverQueue

	rxBufSize int
	rxBufs    map[uint16]uint64
	junkRx    map[uint16]bool   // hand-written rx chains
	junkUsed  map[uint16]uint32 // their used lengths

	// memMu keeps guest memory mapped while a sender uses it; Close takes
	// it exclusively to unmap.
	memMu    sync.RWMutex
	unmapped bool

	txMu    sync.Mutex
	txSlots chan uint64
	txBusy  map[uint16]uint64
	txMode  int

	mu         sync.Mutex
	conns      map[gkey]*gconn
	listeners  map[uint32]chan *gconn
	nextPort   uint32
	violations []string
	bufAlloc   uint32
	silent     bool // ignore connection requests (a hung guest)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type gkey struct{ local, remote uint32 }

const (
	gConnecting = iota
	gEstablished
	gClosed
)

type gconn struct {
	g     *fakeGuest
	key   gkey
	state int
	rst   bool
	cond  *sync.Cond

	recv                     ring
	rxCnt, fwdCnt, advFwd    uint32
	peerBufAlloc, peerFwdCnt uint32
	txCnt                    uint32
	peerShut                 uint32
	shutSent                 uint32
}

// ring is a byte FIFO of fixed capacity.
type ring struct {
	buf        []byte
	head, size int
}

func (r *ring) write(p []byte) {
	for len(p) > 0 {
		t := (r.head + r.size) % len(r.buf)
		n := copy(r.buf[t:min(len(r.buf), t+len(r.buf)-r.size)], p)
		r.size += n
		p = p[n:]
	}
}

func (r *ring) read(p []byte) int {
	n := 0
	for n < len(p) && r.size > 0 {
		k := copy(p[n:], r.buf[r.head:min(len(r.buf), r.head+r.size)])
		r.head = (r.head + k) % len(r.buf)
		r.size -= k
		n += k
	}
	return n
}

const (
	guestBufAlloc  = 256 * 1024
	guestMaxTxPkt  = 32 * 1024
	guestTxSlots   = 48
	guestQueueSize = 128
)

type guestOpts struct {
	rxBufSize  int  // payload bytes per rx buffer (Linux: 4096)
	rxSpare    int  // rx descriptors left free for hand-written chains
	noEventIdx bool // do not negotiate VIRTIO_RING_F_EVENT_IDX (Linux does)
}

// newFakeGuest connects to the back end's vhost-user socket and brings the
// device up as QEMU and the Linux driver would.
func newFakeGuest(t testing.TB, sock string, cid uint64, o guestOpts) *fakeGuest {
	t.Helper()
	if o.rxBufSize == 0 {
		o.rxBufSize = 4096
	}
	g := &fakeGuest{t: t, cid: cid, rxBufSize: o.rxBufSize, rxBufs: map[uint16]uint64{}, junkRx: map[uint16]bool{}, junkUsed: map[uint16]uint32{}, txBusy: map[uint16]uint64{},
		conns: map[gkey]*gconn{}, listeners: map[uint32]chan *gconn{}, nextPort: 50000, bufAlloc: guestBufAlloc}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	var err error
	g.mem, err = vhostusertest.NewGuestMemory(32<<20, 0x40000000, 0x7f1200000000)
	if err != nil {
		t.Fatal(err)
	}
	var fe *vhostusertest.Frontend
	for i := 0; ; i++ {
		fe, err = vhostusertest.Dial(sock)
		if err == nil || i > 100 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dial vhost-user socket: %v", err)
	}
	g.fe = fe
	feat, err := fe.Negotiate(vhostuser.ProtocolFeatureReplyAck | vhostuser.ProtocolFeatureConfig)
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(vhostuser.FeatureVersion1 | vhostuser.FeatureIndirectDesc | vhostuser.FeatureProtocolFeatures)
	if !o.noEventIdx {
		want |= vhostuser.FeatureEventIdx
	}
	if feat&want != want {
		t.Fatalf("features %#x lack %#x", feat, want)
	}
	cfg, err := fe.GetConfig(0, 8)
	if err != nil {
		t.Fatal(err)
	}
	if got := uint64(cfg[0]) | uint64(cfg[1])<<8 | uint64(cfg[2])<<16 | uint64(cfg[3])<<24; got != cid {
		t.Fatalf("GET_CONFIG guest_cid %d, want %d", got, cid)
	}
	if _, err := fe.Send(vhostuser.ReqSetFeatures, vhostuser.U64(want)); err != nil {
		t.Fatal(err)
	}
	if err := fe.SetMemTable(g.mem); err != nil {
		t.Fatal(err)
	}
	if g.rx, err = vhostusertest.NewDriverQueue(g.mem, 0, guestQueueSize); err != nil {
		t.Fatal(err)
	}
	if g.tx, err = vhostusertest.NewDriverQueue(g.mem, 1, guestQueueSize); err != nil {
		t.Fatal(err)
	}
	g.rx.EventIdx, g.tx.EventIdx = !o.noEventIdx, !o.noEventIdx
	for g.rx.Free() > o.rxSpare {
		gpa, err := g.mem.Alloc(uint64(HeaderSize+g.rxBufSize), 8)
		if err != nil {
			t.Fatal(err)
		}
		head, err := g.rx.Add([]vhostusertest.Buf{{GPA: gpa, Len: uint32(HeaderSize + g.rxBufSize), Write: true}})
		if err != nil {
			t.Fatal(err)
		}
		g.rxBufs[head] = gpa
	}
	g.txSlots = make(chan uint64, guestTxSlots)
	for range guestTxSlots {
		gpa, err := g.mem.Alloc(HeaderSize+guestMaxTxPkt, 8)
		if err != nil {
			t.Fatal(err)
		}
		g.txSlots <- gpa
	}
	if err := fe.StartQueue(g.rx); err != nil {
		t.Fatal(err)
	}
	if err := fe.StartQueue(g.tx); err != nil {
		t.Fatal(err)
	}
	g.wg.Add(2)
	go g.rxLoop()
	go g.txLoop()
	t.Cleanup(g.Close)
	return g
}

// Close disconnects the front end (as QEMU exiting would).
func (g *fakeGuest) Close() {
	g.cancel()
	g.fe.Close()
	g.wg.Wait()
	g.mu.Lock()
	for _, c := range g.conns {
		c.state = gClosed
		c.cond.Broadcast()
	}
	g.mu.Unlock()
	g.memMu.Lock()
	defer g.memMu.Unlock()
	if g.unmapped {
		return
	}
	g.unmapped = true
	g.rx.Close()
	g.tx.Close()
	g.mem.Close()
}

func (g *fakeGuest) violation(format string, args ...any) {
	g.violations = append(g.violations, fmt.Sprintf(format, args...))
}

// Violations returns protocol violations the back end committed.
func (g *fakeGuest) Violations() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.violations...)
}

type outPkt struct {
	h       Header
	payload []byte
	after   func() // runs once the packet is queued
}

// send queues one packet on the tx ring, rotating through chain layouts:
// one descriptor, header + payload descriptors, and an indirect table.
func (g *fakeGuest) send(h Header, payload []byte) error {
	var slot uint64
	select {
	case slot = <-g.txSlots:
	case <-g.ctx.Done():
		return g.ctx.Err()
	}
	g.memMu.RLock()
	defer g.memMu.RUnlock()
	if g.unmapped {
		return io.ErrClosedPipe
	}
	h.SrcCID, h.DstCID, h.Type, h.Len = g.cid, HostCID, TypeStream, uint32(len(payload))
	b := g.mem.Bytes(slot, HeaderSize+len(payload))
	h.Put(b)
	copy(b[HeaderSize:], payload)
	g.txMu.Lock()
	defer g.txMu.Unlock()
	var head uint16
	var err error
	mode := g.txMode % 3
	g.txMode++
	switch {
	case mode == 0 || len(payload) == 0:
		head, err = g.tx.Add([]vhostusertest.Buf{{GPA: slot, Len: uint32(len(b))}})
	case mode == 1:
		head, err = g.tx.Add([]vhostusertest.Buf{{GPA: slot, Len: HeaderSize}, {GPA: slot + HeaderSize, Len: uint32(len(payload))}})
	default:
		head, err = g.tx.AddIndirect([]vhostusertest.Buf{{GPA: slot, Len: HeaderSize}, {GPA: slot + HeaderSize, Len: uint32(len(payload))}})
	}
	if err != nil {
		g.txSlots <- slot
		return err
	}
	g.txBusy[head] = slot
	return g.tx.Kick()
}

func (g *fakeGuest) sendAll(out []outPkt) {
	for _, p := range out {
		g.send(p.h, p.payload)
		if p.after != nil {
			p.after()
		}
	}
}

func (g *fakeGuest) txLoop() {
	defer g.wg.Done()
	for {
		if err := g.tx.WaitCall(g.ctx); err != nil {
			return
		}
		g.txMu.Lock()
		for {
			head, _, ok := g.tx.Used()
			if !ok {
				break
			}
			if slot, ok := g.txBusy[head]; ok {
				delete(g.txBusy, head)
				g.txSlots <- slot
			}
		}
		g.txMu.Unlock()
	}
}

func (g *fakeGuest) rxLoop() {
	defer g.wg.Done()
	var out []outPkt
	for {
		if err := g.rx.WaitCall(g.ctx); err != nil {
			return
		}
		g.mu.Lock()
		for {
			head, n, ok := g.rx.Used()
			if !ok {
				break
			}
			gpa, known := g.rxBufs[head]
			if g.junkRx[head] {
				delete(g.junkRx, head)
				g.junkUsed[head] = n
				continue
			}
			if !known {
				g.violation("used head %d was not an rx buffer", head)
				continue
			}
			delete(g.rxBufs, head)
			if n > uint32(HeaderSize+g.rxBufSize) {
				g.violation("used length %d exceeds the buffer", n)
				n = uint32(HeaderSize + g.rxBufSize)
			}
			out = g.handle(g.mem.Bytes(gpa, int(n)), out)
			nh, err := g.rx.Add([]vhostusertest.Buf{{GPA: gpa, Len: uint32(HeaderSize + g.rxBufSize), Write: true}})
			if err != nil {
				g.violation("re-adding rx buffer: %v", err)
				continue
			}
			g.rxBufs[nh] = gpa
		}
		g.rx.Kick()
		g.mu.Unlock()
		g.sendAll(out)
		out = out[:0]
	}
}

// handle processes one packet from the host. Called with g.mu held;
// replies are appended to out and sent without the lock.
func (g *fakeGuest) handle(b []byte, out []outPkt) []outPkt {
	h, err := ParseHeader(b)
	if err != nil {
		g.violation("rx: %v", err)
		return out
	}
	if h.SrcCID != HostCID || h.DstCID != g.cid || h.Type != TypeStream || int(h.Len) != len(b)-HeaderSize {
		g.violation("rx: bad packet %v (used length %d)", h, len(b))
		return out
	}
	key := gkey{local: h.DstPort, remote: h.SrcPort}
	c := g.conns[key]
	rst := outPkt{h: Header{SrcPort: h.DstPort, DstPort: h.SrcPort, Op: OpRST}}
	if c == nil {
		switch h.Op {
		case OpRequest:
			if g.silent {
				return out
			}
			ln := g.listeners[h.DstPort]
			if ln == nil {
				return append(out, rst)
			}
			if len(ln) == cap(ln) {
				return append(out, rst)
			}
			c = g.newConn(key, gEstablished)
			c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
			// Hand the connection to the listener only after RESPONSE is
			// on the ring, so that its data cannot overtake it.
			return append(out, outPkt{h: c.hdr(OpResponse), after: func() { ln <- c }})
		case OpRST:
			return out
		default:
			return append(out, rst)
		}
	}
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	if c.peerFwdCnt-c.txCnt < 1<<31 && c.peerFwdCnt != c.txCnt {
		g.violation("host fwd_cnt %d ahead of what the guest sent (%d)", c.peerFwdCnt, c.txCnt)
	}
	switch h.Op {
	case OpResponse:
		if c.state == gConnecting {
			c.state = gEstablished
		} else {
			g.violation("RESPONSE on an established connection %v", key)
		}
	case OpRW:
		if c.recv.size+int(h.Len) > int(g.bufAlloc) {
			g.violation("host exceeded credit: %d buffered + %d", c.recv.size, h.Len)
			return out
		}
		if c.peerShut&ShutdownSend != 0 {
			g.violation("data after SHUTDOWN(SEND)")
		}
		c.recv.write(b[HeaderSize:])
		c.rxCnt += h.Len
	case OpCreditRequest:
		out = append(out, outPkt{h: c.hdr(OpCreditUpdate)})
	case OpShutdown:
		c.peerShut |= h.Flags
		if c.peerShut == ShutdownRcv|ShutdownSend {
			// Linux resets a connection whose peer shut down both ways.
			c.state, c.rst = gClosed, true
			delete(g.conns, key)
			out = append(out, rst)
		}
	case OpRST:
		c.state, c.rst = gClosed, true
		delete(g.conns, key)
	case OpCreditUpdate:
	default:
		g.violation("unexpected %s", OpName(h.Op))
	}
	c.cond.Broadcast()
	return out
}

func (g *fakeGuest) newConn(key gkey, state int) *gconn {
	c := &gconn{g: g, key: key, state: state, cond: sync.NewCond(&g.mu), recv: ring{buf: make([]byte, g.bufAlloc)}}
	g.conns[key] = c
	return c
}

// hdr builds a header with the connection's addresses and credit; the
// caller holds g.mu.
func (c *gconn) hdr(op uint16) Header {
	c.advFwd = c.fwdCnt
	return Header{SrcPort: c.key.local, DstPort: c.key.remote, Op: op, BufAlloc: c.g.bufAlloc, FwdCnt: c.fwdCnt}
}

// Listen accepts host connections to port.
func (g *fakeGuest) Listen(port uint32) <-chan *gconn {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch := make(chan *gconn, 512)
	g.listeners[port] = ch
	return ch
}

var errRefused = errors.New("connection refused (RST)")

// Dial connects to host port port.
func (g *fakeGuest) Dial(port uint32) (*gconn, error) {
	g.mu.Lock()
	g.nextPort++
	c := g.newConn(gkey{local: g.nextPort, remote: port}, gConnecting)
	h := c.hdr(OpRequest)
	g.mu.Unlock()
	if err := g.send(h, nil); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for c.state == gConnecting {
		c.cond.Wait()
	}
	if c.state != gEstablished {
		return nil, errRefused
	}
	return c, nil
}

func (c *gconn) credit() uint32 {
	inflight := c.txCnt - c.peerFwdCnt
	if inflight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inflight
}

// Write sends p within the host's credit.
func (c *gconn) Write(p []byte) (int, error) {
	g := c.g
	done := 0
	for done < len(p) {
		g.mu.Lock()
		for c.state == gEstablished && c.peerShut&ShutdownRcv == 0 && c.credit() == 0 {
			c.cond.Wait()
		}
		if c.state != gEstablished || c.peerShut&ShutdownRcv != 0 {
			g.mu.Unlock()
			return done, io.ErrClosedPipe
		}
		n := min(len(p)-done, int(c.credit()), guestMaxTxPkt)
		c.txCnt += uint32(n)
		h := c.hdr(OpRW)
		g.mu.Unlock()
		if err := g.send(h, p[done:done+n]); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// Read reads received data, returning credit to the host as it goes.
func (c *gconn) Read(p []byte) (int, error) {
	g := c.g
	g.mu.Lock()
	for c.recv.size == 0 && c.state == gEstablished && c.peerShut&ShutdownSend == 0 {
		c.cond.Wait()
	}
	if c.recv.size == 0 {
		defer g.mu.Unlock()
		if c.rst && c.peerShut&ShutdownSend == 0 {
			return 0, errors.New("connection reset")
		}
		return 0, io.EOF
	}
	n := c.recv.read(p)
	c.fwdCnt += uint32(n)
	var upd *Header
	if c.fwdCnt-c.advFwd >= g.bufAlloc/4 && c.state == gEstablished {
		h := c.hdr(OpCreditUpdate)
		upd = &h
	}
	g.mu.Unlock()
	if upd != nil {
		g.send(*upd, nil)
	}
	return n, nil
}

// CloseWrite sends SHUTDOWN(SEND).
func (c *gconn) CloseWrite() error { return c.shutdown(ShutdownSend) }

// Close sends SHUTDOWN(RCV|SEND), as Linux close() does, and does not
// wait for the host's RST.
func (c *gconn) Close() error { return c.shutdown(ShutdownSend | ShutdownRcv) }

func (c *gconn) shutdown(flags uint32) error {
	g := c.g
	g.mu.Lock()
	if c.state != gEstablished {
		g.mu.Unlock()
		return nil
	}
	c.shutSent |= flags
	h := c.hdr(OpShutdown)
	h.Flags = c.shutSent
	g.mu.Unlock()
	return g.send(h, nil)
}

// Reset sends RST and forgets the connection.
func (c *gconn) Reset() error {
	g := c.g
	g.mu.Lock()
	h := c.hdr(OpRST)
	c.state = gClosed
	delete(g.conns, c.key)
	c.cond.Broadcast()
	g.mu.Unlock()
	return g.send(h, nil)
}

// WaitClosed waits until the host reset or closed the connection.
func (c *gconn) WaitClosed(timeout time.Duration) bool {
	g := c.g
	deadline := time.Now().Add(timeout)
	t := time.AfterFunc(timeout, func() { g.mu.Lock(); c.cond.Broadcast(); g.mu.Unlock() })
	defer t.Stop()
	g.mu.Lock()
	defer g.mu.Unlock()
	for c.state != gClosed && time.Now().Before(deadline) {
		c.cond.Wait()
	}
	return c.state == gClosed
}

// NumConns is how many connections the guest has open.
func (g *fakeGuest) NumConns() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}
