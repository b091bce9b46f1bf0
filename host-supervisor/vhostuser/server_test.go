package vhostuser_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/vhostuser"
	"github.com/sailbox/sailbox/host-supervisor/vhostuser/vhostusertest"
	"golang.org/x/sys/unix"
)

// upperDevice has one queue: each chain's readable bytes come back
// upper-cased in its writable part.
type upperDevice struct {
	mu    sync.Mutex
	q     *vhostuser.Queue
	chain vhostuser.Chain
	seen  int
	bad   int
}

func (d *upperDevice) Features() uint64         { return vhostuser.FeatureVersion1 }
func (d *upperDevice) ProtocolFeatures() uint64 { return vhostuser.ProtocolFeatureConfig }
func (d *upperDevice) NumQueues() int           { return 1 }
func (d *upperDevice) Config(off, size uint32) ([]byte, error) {
	cfg := []byte("0123456789abcdef")
	if uint64(off)+uint64(size) > uint64(len(cfg)) {
		return nil, errors.New("out of range")
	}
	return cfg[off : off+size], nil
}
func (d *upperDevice) Start(q *vhostuser.Queue) { d.mu.Lock(); d.q = q; d.mu.Unlock(); d.Kick(q) }
func (d *upperDevice) Stop(q *vhostuser.Queue) {
	d.mu.Lock()
	if d.q == q {
		d.q = nil
	}
	d.mu.Unlock()
}
func (d *upperDevice) Kick(q *vhostuser.Queue) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q != d.q {
		return
	}
	for {
		err := q.Pop(&d.chain)
		if err == vhostuser.ErrEmpty {
			break
		}
		var ce *vhostuser.ChainError
		if errors.As(err, &ce) {
			d.bad++
			q.Push(ce.Head, 0)
			continue
		}
		if err != nil {
			d.bad++
			return
		}
		in := make([]byte, d.chain.RLen)
		d.chain.ReadAt(in, 0)
		n := d.chain.WriteAt(bytes.ToUpper(in), 0)
		q.Push(d.chain.Head, uint32(n))
		d.seen++
	}
	q.Notify()
}

type rig struct {
	fe    *vhostusertest.Frontend
	mem   *vhostusertest.GuestMemory
	q     *vhostusertest.DriverQueue
	dev   *upperDevice
	errc  chan error
	stop  context.CancelFunc
	inGPA uint64
	out   uint64
}

func socketpair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conv(fds[0]), conv(fds[1])
}

func newRig(t *testing.T, start bool) *rig { return newRigWith(t, start, false) }

func newRigWith(t *testing.T, start, eventIdx bool) *rig {
	a, b := socketpair(t)
	r := &rig{fe: &vhostusertest.Frontend{Conn: a}, dev: &upperDevice{}, errc: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() { r.errc <- vhostuser.Serve(ctx, b, r.dev, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	var err error
	if r.mem, err = vhostusertest.NewGuestMemory(1<<20, 0x80000000, 0x5555_0000_0000); err != nil {
		t.Fatal(err)
	}
	if r.q, err = vhostusertest.NewDriverQueue(r.mem, 0, 16); err != nil {
		t.Fatal(err)
	}
	r.inGPA, _ = r.mem.Alloc(4096, 16)
	r.out, _ = r.mem.Alloc(4096, 16)
	t.Cleanup(func() {
		cancel()
		a.Close()
		<-r.errc
		r.q.Close()
		r.mem.Close()
	})
	if !start {
		return r
	}
	if _, err := r.fe.Negotiate(vhostuser.ProtocolFeatureReplyAck | vhostuser.ProtocolFeatureConfig); err != nil {
		t.Fatal(err)
	}
	feat := uint64(vhostuser.FeatureVersion1 | vhostuser.FeatureIndirectDesc | vhostuser.FeatureProtocolFeatures)
	if eventIdx {
		feat |= vhostuser.FeatureEventIdx
		r.q.EventIdx = true
	}
	if _, err := r.fe.Send(vhostuser.ReqSetFeatures, vhostuser.U64(feat)); err != nil {
		t.Fatal(err)
	}
	if err := r.fe.SetMemTable(r.mem); err != nil {
		t.Fatal(err)
	}
	if err := r.fe.StartQueue(r.q); err != nil {
		t.Fatal(err)
	}
	return r
}

// roundTrip sends msg through the device and returns the answer.
func (r *rig) roundTrip(t *testing.T, msg string, indirect bool) string {
	t.Helper()
	copy(r.mem.Bytes(r.inGPA, len(msg)), msg)
	// Split the input across two descriptors to exercise chaining.
	bufs := []vhostusertest.Buf{{GPA: r.inGPA, Len: uint32(len(msg) / 2)}, {GPA: r.inGPA + uint64(len(msg)/2), Len: uint32(len(msg) - len(msg)/2)}, {GPA: r.out, Len: 4096, Write: true}}
	var err error
	if indirect {
		_, err = r.q.AddIndirect(bufs)
	} else {
		_, err = r.q.Add(bufs)
	}
	if err != nil {
		t.Fatal(err)
	}
	r.q.Kick()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		if _, n, ok := r.q.Used(); ok {
			return string(r.mem.Bytes(r.out, int(n)))
		}
		if err := r.q.WaitCall(ctx); err != nil {
			t.Fatalf("waiting for the device: %v", err)
		}
	}
}

func TestServeDataPath(t *testing.T) {
	for _, ev := range []bool{false, true} {
		t.Run(fmt.Sprintf("event-idx=%v", ev), func(t *testing.T) { testServeDataPath(t, ev) })
	}
}

func testServeDataPath(t *testing.T, eventIdx bool) {
	r := newRigWith(t, true, eventIdx)
	for i := range 40 { // more than the ring size, so indices wrap
		if got := r.roundTrip(t, "hello vhost-user", i%2 == 1); got != "HELLO VHOST-USER" {
			t.Fatalf("round trip %d: %q", i, got)
		}
	}
	cfg, err := r.fe.GetConfig(4, 6)
	if err != nil || string(cfg) != "456789" {
		t.Fatalf("GET_CONFIG: %q, %v", cfg, err)
	}
	if _, err := r.fe.GetConfig(12, 8); err == nil {
		t.Fatal("GET_CONFIG beyond the config space succeeded")
	}
}

func TestGetVringBaseStopsAndRestarts(t *testing.T) {
	r := newRig(t, true)
	for range 5 {
		r.roundTrip(t, "abc", false)
	}
	base, err := r.fe.GetVringBase(0)
	if err != nil {
		t.Fatal(err)
	}
	if base != 5 {
		t.Fatalf("GET_VRING_BASE = %d, want 5", base)
	}
	// Stopped: a new chain is not processed.
	copy(r.mem.Bytes(r.inGPA, 1), "x")
	r.q.Add([]vhostusertest.Buf{{GPA: r.inGPA, Len: 1}, {GPA: r.out, Len: 16, Write: true}})
	r.q.Kick()
	time.Sleep(50 * time.Millisecond)
	if _, _, ok := r.q.Used(); ok {
		t.Fatal("a stopped ring was processed")
	}
	// Restart as QEMU does after a stop: base, then a new kick fd.
	if _, err := r.fe.Send(vhostuser.ReqSetVringBase, vhostuser.VringState{Index: 0, Num: base}.Marshal()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.fe.Send(vhostuser.ReqSetVringKick, vhostuser.U64(0), r.q.KickFd); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		if _, n, ok := r.q.Used(); ok {
			if got := string(r.mem.Bytes(r.out, int(n))); got != "X" {
				t.Fatalf("after restart: %q", got)
			}
			break
		}
		if err := r.q.WaitCall(ctx); err != nil {
			t.Fatal("restarted ring did not process the pending chain")
		}
	}
	// Disable/enable keeps the position too.
	if _, err := r.fe.Send(vhostuser.ReqSetVringEnable, vhostuser.VringState{Index: 0, Num: 0}.Marshal()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.fe.Send(vhostuser.ReqSetVringEnable, vhostuser.VringState{Index: 0, Num: 1}.Marshal()); err != nil {
		t.Fatal(err)
	}
	if got := r.roundTrip(t, "def", false); got != "DEF" {
		t.Fatalf("after disable/enable: %q", got)
	}
}

func TestNoInterruptSuppressesCalls(t *testing.T) {
	r := newRig(t, true)
	r.roundTrip(t, "a", false)
	r.q.DrainCall() // the round trip may have seen the used entry before the call
	r.q.SetNoInterrupt(true)
	r.q.Add([]vhostusertest.Buf{{GPA: r.inGPA, Len: 1}, {GPA: r.out, Len: 16, Write: true}})
	r.q.Kick()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := r.q.WaitCall(ctx); err == nil {
		t.Fatal("device called with VRING_AVAIL_F_NO_INTERRUPT set")
	}
	if _, _, ok := r.q.Used(); !ok {
		t.Fatal("chain not processed")
	}
}

func TestRejectsBadRequests(t *testing.T) {
	r := newRig(t, false)
	if _, err := r.fe.Negotiate(vhostuser.ProtocolFeatureReplyAck); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		req  uint32
		p    []byte
		fds  []int
	}{
		{"feature not offered", vhostuser.ReqSetFeatures, vhostuser.U64(1 << 40), nil},
		{"mem table without fd", vhostuser.ReqSetMemTable, vhostuser.MarshalMemTable([]vhostuser.RegionDesc{{GuestAddr: 0, Size: 4096}}), nil},
		{"mem table zero regions", vhostuser.ReqSetMemTable, vhostuser.MarshalMemTable(nil), nil},
		{"mem table huge region", vhostuser.ReqSetMemTable, vhostuser.MarshalMemTable([]vhostuser.RegionDesc{{Size: 1 << 50}}), []int{r.mem.Fd}},
		{"vring index out of range", vhostuser.ReqSetVringNum, vhostuser.VringState{Index: 7, Num: 16}.Marshal(), nil},
		{"vring size not a power of two", vhostuser.ReqSetVringNum, vhostuser.VringState{Index: 0, Num: 100}.Marshal(), nil},
		{"kick without fd", vhostuser.ReqSetVringKick, vhostuser.U64(0), nil},
		{"short payload", vhostuser.ReqSetVringAddr, []byte{1, 2, 3}, nil},
		{"unknown request", 99, nil, nil},
	}
	for _, c := range cases {
		if _, err := r.fe.Send(c.req, c.p, c.fds...); err == nil {
			t.Errorf("%s: acked as success", c.name)
		}
	}
	// The connection still works.
	if _, err := r.fe.U64(vhostuser.ReqGetFeatures); err != nil {
		t.Fatal(err)
	}
	// A bad header version ends the session with an error.
	msg := vhostuser.MarshalMessage(vhostuser.ReqGetFeatures, 0, nil)
	binary.LittleEndian.PutUint32(msg[4:], 2)
	r.fe.Conn.Write(msg)
	select {
	case err := <-r.errc:
		if err == nil {
			t.Fatal("Serve returned nil after a bad header")
		}
		r.errc <- err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not end after a bad header")
	}
}

// Guest memory in two regions (the second mapped at a file offset), with
// buffers that straddle the boundary.
func TestSplitMemoryRegions(t *testing.T) {
	r := newRig(t, true)
	const at = 512 << 10
	if err := r.fe.SetMemTableSplit(r.mem, at); err != nil {
		t.Fatal(err)
	}
	msg := "straddling the boundary"
	for _, c := range []struct{ in, out uint64 }{
		{r.mem.GPA + at - 7, r.mem.GPA + at + 1024}, // readable buffer across the boundary
		{r.inGPA, r.mem.GPA + at - 5},               // writable buffer across the boundary
	} {
		copy(r.mem.Bytes(c.in, len(msg)), msg)
		r.q.Add([]vhostusertest.Buf{{GPA: c.in, Len: uint32(len(msg))}, {GPA: c.out, Len: 64, Write: true}})
		r.q.Kick()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		for {
			if _, n, ok := r.q.Used(); ok {
				if got := string(r.mem.Bytes(c.out, int(n))); got != "STRADDLING THE BOUNDARY" {
					t.Fatalf("got %q", got)
				}
				break
			}
			if err := r.q.WaitCall(ctx); err != nil {
				t.Fatal("chain across regions not processed")
			}
		}
		cancel()
	}
}

// With event indices the device calls only when the used index passes the
// driver's used_event, and asks for kicks through avail_event.
func TestEventIdx(t *testing.T) {
	r := newRigWith(t, true, true)
	r.roundTrip(t, "a", false)
	r.q.DrainCall()
	// The device, having run dry, asks for a kick at the next avail index.
	ae := binary.LittleEndian.Uint16(r.mem.Bytes(r.q.UsedGPA+4+8*uint64(r.q.Size), 2))
	if ae != r.q.AvailIdx() {
		t.Fatalf("avail_event %d, want %d", ae, r.q.AvailIdx())
	}
	// Ask to be called only once used passes usedEvent.
	usedEvent := r.q.UsedIdx() + 2
	ue := r.mem.Bytes(r.q.AvailGPA+4+2*uint64(r.q.Size), 2)
	for i := range 3 {
		binary.LittleEndian.PutUint16(ue, usedEvent)
		r.q.Add([]vhostusertest.Buf{{GPA: r.inGPA, Len: 1}, {GPA: r.out, Len: 16, Write: true}})
		r.q.Kick()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := r.q.WaitCall(ctx)
		cancel()
		if called := err == nil; called != (i == 2) {
			t.Fatalf("chain %d: called=%v, want a call only when used passes %d", i, called, usedEvent)
		}
	}
	for range 3 {
		if _, _, ok := r.q.Used(); !ok {
			t.Fatal("chain not processed")
		}
	}
}
