package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Split-ring descriptor flags.
const (
	DescFNext     = 1
	DescFWrite    = 2
	DescFIndirect = 4
)

// Ring flags.
const (
	AvailFNoInterrupt = 1 // driver: do not call me
	UsedFNoNotify     = 1 // device: do not kick me
)

// MaxQueueSize is the largest split ring size (virtio spec).
const MaxQueueSize = 32768

// maxIndirect bounds an indirect table (entries); Linux never builds one
// longer than the queue, and a bound keeps a hostile table from costing much.
const maxIndirect = 4096

// ErrEmpty reports that the driver has made no new buffers available.
var ErrEmpty = errors.New("virtqueue: no available buffers")

// ChainError is a descriptor chain that cannot be used (bad address, loop,
// bad flags). Head is valid: the device should return it with Push(Head, 0)
// and go on with the next one.
type ChainError struct {
	Queue int
	Head  uint16
	Err   error
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("virtqueue %d: descriptor chain %d: %v", e.Queue, e.Head, e.Err)
}

func (e *ChainError) Unwrap() error { return e.Err }

// BrokenError is a ring the device cannot continue with (an avail index or a
// head index outside the ring). The queue must not be used again until the
// front end restarts it.
type BrokenError struct {
	Queue int
	Err   error
}

func (e *BrokenError) Error() string {
	return fmt.Sprintf("virtqueue %d broken: %v", e.Queue, e.Err)
}

func (e *BrokenError) Unwrap() error { return e.Err }

// Chain is one descriptor chain resolved to guest memory. R holds the
// device-readable segments in order, W the device-writable ones.
type Chain struct {
	Head uint16
	R    [][]byte
	W    [][]byte
	RLen uint64
	WLen uint64
}

func (c *Chain) reset() {
	c.R = c.R[:0]
	c.W = c.W[:0]
	c.RLen, c.WLen = 0, 0
}

// ReadAt copies readable bytes starting at offset off into p and returns how
// many were copied.
func (c *Chain) ReadAt(p []byte, off uint64) int {
	n := 0
	for _, s := range c.R {
		if off >= uint64(len(s)) {
			off -= uint64(len(s))
			continue
		}
		k := copy(p[n:], s[off:])
		n += k
		off = 0
		if n == len(p) {
			break
		}
	}
	return n
}

// WriteAt copies p into the writable segments starting at offset off and
// returns how many bytes were written.
func (c *Chain) WriteAt(p []byte, off uint64) int {
	n := 0
	for _, s := range c.W {
		if off >= uint64(len(s)) {
			off -= uint64(len(s))
			continue
		}
		k := copy(s[off:], p[n:])
		n += k
		off = 0
		if n == len(p) {
			break
		}
	}
	return n
}

// Queue is a started split virtqueue seen from the device. It is not safe
// for concurrent use: the device serialises its calls.
type Queue struct {
	Index    int
	size     uint16
	mem      *Memory
	desc     []byte
	avail    []byte
	used     []byte
	indirect bool
	eventIdx bool

	lastAvail uint16
	usedIdx   uint16
	dirty     bool // pushed since the last Notify

	// With VIRTIO_RING_F_EVENT_IDX: the used index at the last signal.
	signalled      uint16
	signalledValid bool
	fence          uint32 // target of the atomic add used as a full barrier

	call func() error
}

// QueueConfig describes a ring as the front end set it up.
type QueueConfig struct {
	Index    int
	Size     uint16
	Desc     uint64 // front-end virtual addresses (SET_VRING_ADDR)
	Avail    uint64
	Used     uint64
	Base     uint16 // first avail index to process (SET_VRING_BASE)
	Indirect bool   // VIRTIO_RING_F_INDIRECT_DESC negotiated
	EventIdx bool   // VIRTIO_RING_F_EVENT_IDX negotiated
	// Call signals the driver (the call eventfd); nil means never.
	Call func() error
}

// NewQueue maps a ring in mem. The used index starts at what the ring holds,
// as the kernel's vhost does, so a restarted ring continues where it was.
func NewQueue(mem *Memory, cfg QueueConfig) (*Queue, error) {
	n := uint64(cfg.Size)
	if n == 0 || n > MaxQueueSize || n&(n-1) != 0 {
		return nil, fmt.Errorf("virtqueue %d: size %d is not a power of two up to %d", cfg.Index, n, MaxQueueSize)
	}
	if mem == nil {
		return nil, fmt.Errorf("virtqueue %d: no memory table", cfg.Index)
	}
	q := &Queue{Index: cfg.Index, size: cfg.Size, mem: mem, indirect: cfg.Indirect, eventIdx: cfg.EventIdx, lastAvail: cfg.Base, call: cfg.Call}
	// With event indices each ring ends in one more u16: used_event after
	// the avail ring, avail_event after the used ring.
	extra := uint64(0)
	if cfg.EventIdx {
		extra = 2
	}
	var err error
	if q.desc, err = mem.UserSlice(cfg.Desc, 16*n); err != nil {
		return nil, fmt.Errorf("virtqueue %d descriptor table: %w", cfg.Index, err)
	}
	if q.avail, err = mem.UserSlice(cfg.Avail, 4+2*n+extra); err != nil {
		return nil, fmt.Errorf("virtqueue %d avail ring: %w", cfg.Index, err)
	}
	if q.used, err = mem.UserSlice(cfg.Used, 4+8*n+extra); err != nil {
		return nil, fmt.Errorf("virtqueue %d used ring: %w", cfg.Index, err)
	}
	if addrOf(q.desc)%16 != 0 || addrOf(q.avail)%2 != 0 || addrOf(q.used)%4 != 0 {
		return nil, fmt.Errorf("virtqueue %d: misaligned ring (desc %#x avail %#x used %#x)", cfg.Index, cfg.Desc, cfg.Avail, cfg.Used)
	}
	q.usedIdx = uint16(atomic.LoadUint32(q.usedWord()) >> 16)
	return q, nil
}

// Size is the number of descriptors.
func (q *Queue) Size() uint16 { return q.size }

// LastAvail is the next avail index the device will process; it is what
// GET_VRING_BASE reports.
func (q *Queue) LastAvail() uint16 { return q.lastAvail }

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func (q *Queue) usedWord() *uint32 { return (*uint32)(unsafe.Pointer(&q.used[0])) }

// availWord atomically loads the aligned 32-bit word holding avail.idx and
// returns (flags, idx). The load orders the descriptor reads that follow it.
func (q *Queue) availWord() (flags uint16, idx uint16) {
	if addrOf(q.avail)%4 == 0 {
		w := atomic.LoadUint32((*uint32)(unsafe.Pointer(&q.avail[0])))
		return uint16(w), uint16(w >> 16)
	}
	w := atomic.LoadUint32((*uint32)(unsafe.Pointer(&q.avail[2])))
	return binary.LittleEndian.Uint16(q.avail), uint16(w)
}

// Pending reports how many chains the driver has made available that the
// device has not taken yet.
func (q *Queue) Pending() int {
	_, idx := q.availWord()
	return int(idx - q.lastAvail)
}

// Pop takes the next available chain into c. It returns ErrEmpty when there
// is none, a *ChainError for an unusable chain (return it with Push(c.Head,
// 0)), or a *BrokenError when the ring itself is corrupt.
func (q *Queue) Pop(c *Chain) error {
	_, idx := q.availWord()
	if idx == q.lastAvail && q.eventIdx {
		// Ask for a kick when the driver adds the next chain, then look
		// again: it may have added one before seeing the request.
		binary.LittleEndian.PutUint16(q.used[4+8*uint64(q.size):], q.lastAvail)
		atomic.AddUint32(&q.fence, 1)
		_, idx = q.availWord()
	}
	if idx == q.lastAvail {
		return ErrEmpty
	}
	if d := idx - q.lastAvail; d > q.size {
		return &BrokenError{q.Index, fmt.Errorf("avail index %d is %d ahead of %d (ring size %d)", idx, d, q.lastAvail, q.size)}
	}
	slot := uint64(q.lastAvail % q.size)
	head := binary.LittleEndian.Uint16(q.avail[4+2*slot:])
	if head >= q.size {
		return &BrokenError{q.Index, fmt.Errorf("avail ring slot %d holds head %d, ring size %d", slot, head, q.size)}
	}
	q.lastAvail++
	c.Head = head
	c.reset()
	if err := q.walk(c, head); err != nil {
		c.reset()
		return &ChainError{Queue: q.Index, Head: head, Err: err}
	}
	return nil
}

// walk resolves the chain that starts at head.
func (q *Queue) walk(c *Chain, head uint16) error {
	table := q.desc
	tableLen := uint32(q.size)
	idx := uint32(head)
	count := uint32(0)
	indirect := false
	for {
		if idx >= tableLen {
			return fmt.Errorf("descriptor index %d outside table of %d", idx, tableLen)
		}
		count++
		if count > tableLen {
			return fmt.Errorf("chain longer than its table of %d (a loop)", tableLen)
		}
		d := table[16*idx : 16*idx+16]
		addr := binary.LittleEndian.Uint64(d)
		length := binary.LittleEndian.Uint32(d[8:])
		flags := binary.LittleEndian.Uint16(d[12:])
		next := binary.LittleEndian.Uint16(d[14:])
		if flags&DescFIndirect != 0 {
			switch {
			case !q.indirect:
				return fmt.Errorf("indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")
			case indirect:
				return fmt.Errorf("nested indirect descriptor")
			case flags&DescFNext != 0:
				return fmt.Errorf("indirect descriptor with NEXT")
			case length == 0 || length%16 != 0 || length/16 > maxIndirect:
				return fmt.Errorf("indirect table of %d bytes", length)
			}
			t, err := q.mem.Slice(addr, length)
			if err != nil {
				return fmt.Errorf("indirect table: %w", err)
			}
			if uint32(len(t)) != length {
				return fmt.Errorf("indirect table at %#x crosses a memory region", addr)
			}
			table, tableLen, idx, count, indirect = t, length/16, 0, 0, true
			continue
		}
		write := flags&DescFWrite != 0
		if !write && len(c.W) > 0 {
			return fmt.Errorf("device-readable descriptor after a writable one")
		}
		for rest, a := length, addr; rest > 0; {
			s, err := q.mem.Slice(a, rest)
			if err != nil {
				return fmt.Errorf("descriptor %d (addr %#x len %d): %w", idx, addr, length, err)
			}
			if write {
				c.W = append(c.W, s)
			} else {
				c.R = append(c.R, s)
			}
			rest -= uint32(len(s))
			a += uint64(len(s))
		}
		if write {
			c.WLen += uint64(length)
		} else {
			c.RLen += uint64(length)
		}
		if flags&DescFNext == 0 {
			return nil
		}
		idx = uint32(next)
	}
}

// Push returns a chain to the driver with n bytes written into it.
func (q *Queue) Push(head uint16, n uint32) {
	off := 4 + 8*uint64(q.usedIdx%q.size)
	binary.LittleEndian.PutUint32(q.used[off:], uint32(head))
	binary.LittleEndian.PutUint32(q.used[off+4:], n)
	q.usedIdx++
	// The store publishes the element written above (release).
	atomic.StoreUint32(q.usedWord(), uint32(q.usedIdx)<<16)
	q.dirty = true
}

// Notify signals the driver if chains were pushed since the last Notify and
// the driver has not suppressed interrupts.
func (q *Queue) Notify() error {
	if !q.dirty {
		return nil
	}
	q.dirty = false
	if q.eventIdx {
		// The used index was published by an atomic store; the fence
		// orders the read of used_event after it.
		atomic.AddUint32(&q.fence, 1)
		event := binary.LittleEndian.Uint16(q.avail[4+2*uint64(q.size):])
		old := q.signalled
		need := !q.signalledValid || q.usedIdx-event-1 < q.usedIdx-old
		q.signalled, q.signalledValid = q.usedIdx, true
		if !need {
			return nil
		}
	} else if flags, _ := q.availWord(); flags&AvailFNoInterrupt != 0 {
		return nil
	}
	if q.call == nil {
		return nil
	}
	return q.call()
}
