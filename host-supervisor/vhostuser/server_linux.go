package vhostuser

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Device is the virtio device behind the vhost-user back end.
//
// Start hands the device a started queue; the device may use it (from any
// goroutine, serialised by the device) until Stop for the same queue
// returns. Kick reports a driver notification on a started queue; it may
// race with Stop, so the device must check that q is still its current queue.
type Device interface {
	// Features are the virtio feature bits the device offers (VERSION_1 and
	// device-specific bits); the server adds INDIRECT_DESC and
	// PROTOCOL_FEATURES.
	Features() uint64
	// ProtocolFeatures are protocol features the device needs besides
	// REPLY_ACK, which the server always offers (e.g. CONFIG).
	ProtocolFeatures() uint64
	NumQueues() int
	// Config returns size bytes of device config space from offset.
	Config(offset, size uint32) ([]byte, error)
	Start(q *Queue)
	Stop(q *Queue)
	Kick(q *Queue)
}

// serverFeatures are the ring features implemented here.
const serverFeatures = FeatureIndirectDesc | FeatureEventIdx | FeatureProtocolFeatures

type vring struct {
	num     uint32
	addr    VringAddr
	addrSet bool
	base    uint16
	enabled bool
	kick    *os.File
	call    atomic.Pointer[os.File]
	errFd   *os.File

	q        *Queue
	kickDone chan struct{}
}

// Server serves one front-end connection.
type Server struct {
	conn     *net.UnixConn
	dev      Device
	log      *slog.Logger
	acked    uint64
	protocol uint64
	mem      *Memory
	vrings   []*vring
	hdr      [HeaderSize]byte
	oob      []byte
}

// Serve runs the vhost-user protocol on conn until the front end
// disconnects (nil) or ctx ends (ctx.Err()), then stops every queue and
// unmaps guest memory. It closes conn.
func Serve(ctx context.Context, conn *net.UnixConn, dev Device, log *slog.Logger) error {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{conn: conn, dev: dev, log: log, oob: make([]byte, unix.CmsgSpace(4*MaxFds))}
	for range dev.NumQueues() {
		s.vrings = append(s.vrings, &vring{})
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer s.shutdown()
	for {
		h, payload, fds, err := s.read()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if frontEndGone(err) {
				return nil
			}
			return err
		}
		reply, herr := s.handle(h, payload, fds)
		log.Debug("vhost-user request", "request", RequestName(h.Request), "size", h.Size, "fds", len(fds), "err", herr)
		if herr != nil {
			log.Warn("vhost-user request failed", "request", RequestName(h.Request), "err", herr)
		}
		if reply != nil {
			err = s.write(h.Request, reply)
		} else if h.Flags&FlagNeedReply != 0 && s.protocol&ProtocolFeatureReplyAck != 0 {
			status := uint64(0)
			if herr != nil {
				status = 1
			}
			err = s.write(h.Request, U64(status))
		}
		if err != nil {
			if frontEndGone(err) {
				return nil
			}
			return fmt.Errorf("vhost-user reply to %s: %w", RequestName(h.Request), err)
		}
	}
}

// frontEndGone tells a front end that went away (QEMU exited or was
// killed) from a protocol error.
func frontEndGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE)
}

func (s *Server) write(req uint32, payload []byte) error {
	_, err := s.conn.Write(MarshalMessage(req, FlagReply, payload))
	return err
}

// read reads one message with the fds that came with it.
func (s *Server) read() (Header, []byte, []int, error) {
	var fds []int
	fail := func(err error) (Header, []byte, []int, error) {
		closeFds(fds)
		return Header{}, nil, nil, err
	}
	readSome := func(b []byte) error {
		for got := 0; got < len(b); {
			n, oobn, flags, _, err := s.conn.ReadMsgUnix(b[got:], s.oob)
			if oobn > 0 {
				rights, perr := parseRights(s.oob[:oobn])
				fds = append(fds, rights...)
				if perr != nil {
					return perr
				}
			}
			if flags&unix.MSG_CTRUNC != 0 {
				return fmt.Errorf("vhost-user: too many file descriptors in one message")
			}
			if err != nil {
				if got > 0 && errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			if n == 0 {
				return io.EOF
			}
			got += n
		}
		return nil
	}
	if err := readSome(s.hdr[:]); err != nil {
		return fail(err)
	}
	h, err := ParseHeader(s.hdr[:])
	if err != nil {
		return fail(err)
	}
	payload := make([]byte, h.Size)
	if err := readSome(payload); err != nil {
		return fail(err)
	}
	if len(fds) > MaxFds {
		return fail(fmt.Errorf("vhost-user %s: %d file descriptors", RequestName(h.Request), len(fds)))
	}
	return h, payload, fds, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("vhost-user control message: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return fds, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeFds(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// handle executes one request. It returns the reply payload for requests
// that have one, and takes ownership of fds.
func (s *Server) handle(h Header, p []byte, fds []int) (reply []byte, err error) {
	used := 0 // fds consumed
	defer func() { closeFds(fds[used:]) }()
	u64 := func() (uint64, error) {
		if len(p) < 8 {
			return 0, fmt.Errorf("payload of %d bytes, want 8", len(p))
		}
		return binary.LittleEndian.Uint64(p), nil
	}
	ring := func(i uint32) (*vring, error) {
		if int(i) >= len(s.vrings) {
			return nil, fmt.Errorf("vring index %d, device has %d", i, len(s.vrings))
		}
		return s.vrings[i], nil
	}
	switch h.Request {
	case reqGetFeatures:
		return U64(s.dev.Features() | serverFeatures), nil
	case reqSetFeatures:
		v, err := u64()
		if err != nil {
			return nil, err
		}
		if extra := v &^ (s.dev.Features() | serverFeatures); extra != 0 {
			return nil, fmt.Errorf("features %#x not offered", extra)
		}
		s.acked = v
		s.log.Debug("vhost-user features acked", "features", fmt.Sprintf("%#x", v))
		return nil, nil
	case reqGetProtocolFeatures:
		return U64(s.dev.ProtocolFeatures() | ProtocolFeatureReplyAck), nil
	case reqSetProtocolFeatures:
		v, err := u64()
		if err != nil {
			return nil, err
		}
		s.protocol = v & (s.dev.ProtocolFeatures() | ProtocolFeatureReplyAck)
		return nil, nil
	case reqSetOwner:
		return nil, nil
	case reqResetOwner, reqResetDevice:
		for i := range s.vrings {
			s.stopRing(i)
			s.closeRing(s.vrings[i])
			s.vrings[i] = &vring{}
		}
		s.acked = 0
		return nil, nil
	case reqGetQueueNum:
		return U64(uint64(len(s.vrings))), nil
	case reqGetMaxMemSlots:
		return U64(MaxRegions), nil
	case reqSetMemTable:
		regions, err := parseMemTable(p)
		if err != nil {
			return nil, err
		}
		if len(fds) != len(regions) {
			return nil, fmt.Errorf("mem table: %d regions but %d fds", len(regions), len(fds))
		}
		used = len(fds)
		mem, err := mapRegions(regions, fds)
		closeFds(fds)
		if err != nil {
			return nil, err
		}
		for i := range s.vrings {
			s.stopRing(i)
		}
		s.mem.Close()
		s.mem = mem
		for i := range s.vrings {
			s.maybeStart(i)
		}
		s.log.Debug("vhost-user memory table", "regions", len(regions))
		return nil, nil
	case reqSetVringNum, reqSetVringBase, reqSetVringEnable:
		st, err := parseVringState(p)
		if err != nil {
			return nil, err
		}
		vr, err := ring(st.Index)
		if err != nil {
			return nil, err
		}
		s.stopRing(int(st.Index))
		switch h.Request {
		case reqSetVringNum:
			if st.Num == 0 || st.Num > MaxQueueSize || st.Num&(st.Num-1) != 0 {
				return nil, fmt.Errorf("vring %d: size %d", st.Index, st.Num)
			}
			vr.num = st.Num
		case reqSetVringBase:
			vr.base = uint16(st.Num)
		case reqSetVringEnable:
			vr.enabled = st.Num != 0
		}
		s.maybeStart(int(st.Index))
		return nil, nil
	case reqSetVringAddr:
		a, err := parseVringAddr(p)
		if err != nil {
			return nil, err
		}
		vr, err := ring(a.Index)
		if err != nil {
			return nil, err
		}
		s.stopRing(int(a.Index))
		vr.addr, vr.addrSet = a, true
		s.maybeStart(int(a.Index))
		return nil, nil
	case reqGetVringBase:
		st, err := parseVringState(p)
		if err != nil {
			return nil, err
		}
		vr, err := ring(st.Index)
		if err != nil {
			// A reply is still owed, or QEMU waits forever.
			return VringState{st.Index, 0}.Marshal(), err
		}
		s.stopRing(int(st.Index))
		// The ring stays stopped until the next SET_VRING_KICK.
		if vr.kick != nil {
			vr.kick.Close()
			vr.kick = nil
		}
		return VringState{st.Index, uint32(vr.base)}.Marshal(), nil
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		v, err := u64()
		if err != nil {
			return nil, err
		}
		vr, err := ring(uint32(v & vringIndexMask))
		if err != nil {
			return nil, err
		}
		idx := int(v & vringIndexMask)
		var f *os.File
		if v&VringNoFd == 0 {
			if len(fds) != 1 {
				return nil, fmt.Errorf("vring %d: %d fds, want 1", idx, len(fds))
			}
			used = 1
			if err := unix.SetNonblock(fds[0], true); err != nil {
				unix.Close(fds[0])
				return nil, fmt.Errorf("vring %d eventfd: %w", idx, err)
			}
			f = os.NewFile(uintptr(fds[0]), fmt.Sprintf("vring%d-%s", idx, RequestName(h.Request)))
		}
		switch h.Request {
		case reqSetVringKick:
			s.stopRing(idx)
			if vr.kick != nil {
				vr.kick.Close()
			}
			vr.kick = f
			if f == nil {
				return nil, fmt.Errorf("vring %d: polling mode (no kick fd) is not supported", idx)
			}
			s.maybeStart(idx)
		case reqSetVringCall:
			if old := vr.call.Swap(f); old != nil {
				old.Close()
			}
		case reqSetVringErr:
			if vr.errFd != nil {
				vr.errFd.Close()
			}
			vr.errFd = f
		}
		return nil, nil
	case reqGetConfig:
		c, err := ParseConfigMsg(p)
		if err != nil {
			return nil, err
		}
		data, err := s.dev.Config(c.Offset, c.Size)
		if err != nil || len(data) != int(c.Size) {
			return ConfigMsg{Offset: c.Offset, Size: 0, Flags: c.Flags}.Marshal(), fmt.Errorf("config offset %d size %d: %v", c.Offset, c.Size, err)
		}
		return ConfigMsg{Offset: c.Offset, Size: c.Size, Flags: c.Flags, Data: data}.Marshal(), nil
	}
	return nil, fmt.Errorf("unsupported request")
}

// maybeStart starts vring i when it has everything it needs.
func (s *Server) maybeStart(i int) {
	vr := s.vrings[i]
	enabled := vr.enabled || s.acked&FeatureProtocolFeatures == 0
	if vr.q != nil || vr.kick == nil || !enabled || !vr.addrSet || vr.num == 0 || s.mem == nil {
		return
	}
	q, err := NewQueue(s.mem, QueueConfig{
		Index: i, Size: uint16(vr.num), Desc: vr.addr.Desc, Avail: vr.addr.Avail, Used: vr.addr.Used,
		Base: vr.base, Indirect: s.acked&FeatureIndirectDesc != 0, EventIdx: s.acked&FeatureEventIdx != 0,
		Call: func() error {
			f := vr.call.Load()
			if f == nil {
				return nil
			}
			_, err := f.Write(eventfdOne[:])
			if errors.Is(err, os.ErrClosed) {
				err = nil // replaced under us; the new fd gets the next signal
			}
			return err
		},
	})
	if err != nil {
		s.log.Warn("vhost-user vring not started", "vring", i, "err", err)
		return
	}
	vr.q = q
	vr.kickDone = make(chan struct{})
	s.dev.Start(q)
	go func(kick *os.File, done chan struct{}) {
		defer close(done)
		var b [8]byte
		for {
			if _, err := kick.Read(b[:]); err != nil {
				return
			}
			s.dev.Kick(q)
		}
	}(vr.kick, vr.kickDone)
	s.log.Debug("vhost-user vring started", "vring", i, "size", vr.num, "base", vr.base)
}

var eventfdOne = [8]byte{1}

// stopRing stops vring i if it runs and remembers where it stopped.
func (s *Server) stopRing(i int) {
	vr := s.vrings[i]
	if vr.q == nil {
		return
	}
	s.dev.Stop(vr.q)
	vr.base = vr.q.LastAvail()
	vr.q = nil
	// Wake the kick reader with a deadline; the fd stays open, and a kick
	// that lands meanwhile stays in the eventfd for the next reader.
	vr.kick.SetReadDeadline(time.Now())
	<-vr.kickDone
	vr.kick.SetReadDeadline(time.Time{})
}

func (s *Server) closeRing(vr *vring) {
	if vr.kick != nil {
		vr.kick.Close()
	}
	if f := vr.call.Swap(nil); f != nil {
		f.Close()
	}
	if vr.errFd != nil {
		vr.errFd.Close()
	}
}

func (s *Server) shutdown() {
	for i, vr := range s.vrings {
		s.stopRing(i)
		s.closeRing(vr)
	}
	s.mem.Close()
	s.mem = nil
	s.conn.Close()
}

// mapRegions mmaps the memfd regions of a SET_MEM_TABLE.
func mapRegions(descs []RegionDesc, fds []int) (*Memory, error) {
	var maps [][]byte
	unmap := func() error {
		var first error
		for _, m := range maps {
			if err := unix.Munmap(m); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	regions := make([]Region, len(descs))
	page := uint64(unix.Getpagesize())
	for i, d := range descs {
		// Map from the page holding MmapOffset, not from the file's start.
		base := d.MmapOffset &^ (page - 1)
		lead := d.MmapOffset - base
		total := lead + d.Size
		if d.Size == 0 || total < d.Size || total > 1<<40 || base > 1<<62 {
			unmap()
			return nil, fmt.Errorf("mem table region %d: size %#x offset %#x", i, d.Size, d.MmapOffset)
		}
		m, err := unix.Mmap(fds[i], int64(base), int(total), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			unmap()
			return nil, fmt.Errorf("mem table region %d: mmap %#x bytes at %#x: %w", i, total, base, err)
		}
		maps = append(maps, m)
		regions[i] = Region{GuestAddr: d.GuestAddr, UserAddr: d.UserAddr, Data: m[lead:total:total]}
	}
	mem, err := NewMemory(regions)
	if err != nil {
		unmap()
		return nil, err
	}
	var once sync.Once
	var uerr error
	mem.unmap = func() error { once.Do(func() { uerr = unmap() }); return uerr }
	return mem, nil
}
