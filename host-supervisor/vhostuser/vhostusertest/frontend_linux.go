package vhostusertest

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/vhostuser"
	"golang.org/x/sys/unix"
)

var aLongTimeAgo = time.Unix(1, 0)

// Frontend speaks vhost-user to a back end the way QEMU does.
type Frontend struct {
	Conn     *net.UnixConn
	Protocol uint64 // negotiated protocol features
}

// Dial connects to a back end's socket.
func Dial(path string) (*Frontend, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	return &Frontend{Conn: c}, nil
}

// Close closes the connection.
func (f *Frontend) Close() error { return f.Conn.Close() }

// hasReply lists the requests answered with a payload.
func hasReply(req uint32) bool {
	switch req {
	case vhostuser.ReqGetFeatures, vhostuser.ReqGetProtocolFeatures, vhostuser.ReqGetVringBase,
		vhostuser.ReqGetConfig, vhostuser.ReqGetQueueNum:
		return true
	}
	return false
}

// Send sends one message with fds. For requests with a reply, or when
// REPLY_ACK was negotiated, it reads the reply and returns its payload; a
// non-zero ack is an error.
func (f *Frontend) Send(req uint32, payload []byte, fds ...int) ([]byte, error) {
	flags := uint32(0)
	ack := !hasReply(req) && f.Protocol&vhostuser.ProtocolFeatureReplyAck != 0
	if ack {
		flags |= vhostuser.FlagNeedReply
	}
	msg := vhostuser.MarshalMessage(req, flags, payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := f.Conn.WriteMsgUnix(msg, oob, nil); err != nil {
		return nil, fmt.Errorf("send %s: %w", vhostuser.RequestName(req), err)
	}
	if !hasReply(req) && !ack {
		return nil, nil
	}
	var hb [vhostuser.HeaderSize]byte
	if _, err := io.ReadFull(f.Conn, hb[:]); err != nil {
		return nil, fmt.Errorf("reply to %s: %w", vhostuser.RequestName(req), err)
	}
	h, err := vhostuser.ParseHeader(hb[:])
	if err != nil {
		return nil, err
	}
	if h.Request != req || h.Flags&vhostuser.FlagReply == 0 {
		return nil, fmt.Errorf("reply to %s: got %s flags %#x", vhostuser.RequestName(req), vhostuser.RequestName(h.Request), h.Flags)
	}
	p := make([]byte, h.Size)
	if _, err := io.ReadFull(f.Conn, p); err != nil {
		return nil, fmt.Errorf("reply to %s: %w", vhostuser.RequestName(req), err)
	}
	if ack {
		if len(p) != 8 || binary.LittleEndian.Uint64(p) != 0 {
			return p, fmt.Errorf("%s: back end replied failure", vhostuser.RequestName(req))
		}
	}
	return p, nil
}

// U64 sends a request whose reply is a u64.
func (f *Frontend) U64(req uint32) (uint64, error) {
	p, err := f.Send(req, nil)
	if err != nil {
		return 0, err
	}
	if len(p) != 8 {
		return 0, fmt.Errorf("%s: reply of %d bytes", vhostuser.RequestName(req), len(p))
	}
	return binary.LittleEndian.Uint64(p), nil
}

// Negotiate does QEMU's realize-time sequence: features, protocol features
// (keeping want&offered), SET_OWNER. It returns the offered features.
func (f *Frontend) Negotiate(wantProtocol uint64) (uint64, error) {
	feat, err := f.U64(vhostuser.ReqGetFeatures)
	if err != nil {
		return 0, err
	}
	if feat&vhostuser.FeatureProtocolFeatures == 0 {
		return feat, fmt.Errorf("back end lacks PROTOCOL_FEATURES (%#x)", feat)
	}
	pf, err := f.U64(vhostuser.ReqGetProtocolFeatures)
	if err != nil {
		return 0, err
	}
	if _, err := f.Send(vhostuser.ReqSetProtocolFeatures, vhostuser.U64(pf&wantProtocol)); err != nil {
		return 0, err
	}
	f.Protocol = pf & wantProtocol
	if _, err := f.Send(vhostuser.ReqSetOwner, nil); err != nil {
		return 0, err
	}
	return feat, nil
}

// GetConfig reads device config space.
func (f *Frontend) GetConfig(offset, size uint32) ([]byte, error) {
	p, err := f.Send(vhostuser.ReqGetConfig, vhostuser.ConfigMsg{Offset: offset, Size: size, Data: make([]byte, size)}.Marshal())
	if err != nil {
		return nil, err
	}
	c, err := vhostuser.ParseConfigMsg(p)
	if err != nil {
		return nil, err
	}
	if c.Size != size {
		return nil, fmt.Errorf("GET_CONFIG: %d bytes back, asked %d", c.Size, size)
	}
	return c.Data, nil
}

// SetMemTable announces mem as one region.
func (f *Frontend) SetMemTable(mem *GuestMemory) error {
	_, err := f.Send(vhostuser.ReqSetMemTable, vhostuser.MarshalMemTable([]vhostuser.RegionDesc{{
		GuestAddr: mem.GPA, Size: uint64(len(mem.Data)), UserAddr: mem.UVA,
	}}), mem.Fd)
	return err
}

// StartQueue sends what QEMU sends to start a ring: NUM, BASE, ADDR, KICK,
// CALL, ENABLE.
func (f *Frontend) StartQueue(q *DriverQueue) error {
	return f.RestartQueue(q, 0)
}

// RestartQueue starts a ring at avail index base, as QEMU does on "cont"
// after "stop" (which sent GET_VRING_BASE).
func (f *Frontend) RestartQueue(q *DriverQueue, base uint32) error {
	i := uint32(q.Index)
	steps := []struct {
		req uint32
		p   []byte
		fds []int
	}{
		{vhostuser.ReqSetVringCall, vhostuser.U64(uint64(i)), []int{q.CallFd}},
		{vhostuser.ReqSetVringNum, vhostuser.VringState{Index: i, Num: uint32(q.Size)}.Marshal(), nil},
		{vhostuser.ReqSetVringBase, vhostuser.VringState{Index: i, Num: base}.Marshal(), nil},
		{vhostuser.ReqSetVringAddr, vhostuser.VringAddr{Index: i,
			Desc: q.Mem.UserAddr(q.DescGPA), Used: q.Mem.UserAddr(q.UsedGPA), Avail: q.Mem.UserAddr(q.AvailGPA)}.Marshal(), nil},
		{vhostuser.ReqSetVringKick, vhostuser.U64(uint64(i)), []int{q.KickFd}},
		{vhostuser.ReqSetVringEnable, vhostuser.VringState{Index: i, Num: 1}.Marshal(), nil},
	}
	for _, s := range steps {
		if _, err := f.Send(s.req, s.p, s.fds...); err != nil {
			return fmt.Errorf("vring %d: %w", i, err)
		}
	}
	return nil
}

// GetVringBase stops a ring and returns its next avail index.
func (f *Frontend) GetVringBase(index uint32) (uint32, error) {
	p, err := f.Send(vhostuser.ReqGetVringBase, vhostuser.VringState{Index: index}.Marshal())
	if err != nil {
		return 0, err
	}
	if len(p) != 8 {
		return 0, fmt.Errorf("GET_VRING_BASE: reply of %d bytes", len(p))
	}
	return binary.LittleEndian.Uint32(p[4:]), nil
}

// SetMemTableSplit announces mem as two regions of the same memfd split at
// byte offset at (the second with a non-zero mmap offset), as QEMU does
// for RAM split around a hole.
func (f *Frontend) SetMemTableSplit(mem *GuestMemory, at uint64) error {
	size := uint64(len(mem.Data))
	_, err := f.Send(vhostuser.ReqSetMemTable, vhostuser.MarshalMemTable([]vhostuser.RegionDesc{
		{GuestAddr: mem.GPA, Size: at, UserAddr: mem.UVA},
		{GuestAddr: mem.GPA + at, Size: size - at, UserAddr: mem.UVA + at, MmapOffset: at},
	}), mem.Fd, mem.Fd)
	return err
}
