package vhostusertest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/sailbox/sailbox/host-supervisor/vhostuser"
	"golang.org/x/sys/unix"
)

// Buf is one buffer of a chain, in guest memory.
type Buf struct {
	GPA   uint64
	Len   uint32
	Write bool // device-writable
}

// DriverQueue is the driver side of a split virtqueue. It is not safe for
// concurrent use.
type DriverQueue struct {
	Index int
	Size  uint16
	Mem   *GuestMemory

	DescGPA, AvailGPA, UsedGPA uint64
	desc, avail, used          []byte

	KickFd, CallFd int
	callFile       *os.File
	waitMu         sync.Mutex
	waitGen        uint64

	// EventIdx: VIRTIO_RING_F_EVENT_IDX was negotiated; set before use.
	EventIdx bool
	lastKick uint16
	fence    uint32

	free     []uint16
	chains   map[uint16][]uint16
	indirect []uint64 // per head: an indirect table of maxIndirect entries
	availIdx uint16
	lastUsed uint16
}

const maxIndirect = 16

// NewDriverQueue lays out a ring of size entries in mem and creates its
// kick and call eventfds (non-blocking, as QEMU's are).
func NewDriverQueue(mem *GuestMemory, index int, size uint16) (*DriverQueue, error) {
	q := &DriverQueue{Index: index, Size: size, Mem: mem, chains: map[uint16][]uint16{}}
	n := uint64(size)
	var err error
	if q.DescGPA, err = mem.Alloc(16*n, 16); err != nil {
		return nil, err
	}
	if q.AvailGPA, err = mem.Alloc(6+2*n, 4); err != nil {
		return nil, err
	}
	// 8 bytes beyond the elements: avail_event, and room for reading it
	// with a 32-bit atomic load.
	if q.UsedGPA, err = mem.Alloc(8+8*n, 4); err != nil {
		return nil, err
	}
	q.desc = mem.Bytes(q.DescGPA, int(16*n))
	q.avail = mem.Bytes(q.AvailGPA, int(6+2*n))
	q.used = mem.Bytes(q.UsedGPA, int(8+8*n))
	for i := range n {
		q.free = append(q.free, uint16(i))
		t, err := mem.Alloc(16*maxIndirect, 16)
		if err != nil {
			return nil, err
		}
		q.indirect = append(q.indirect, t)
	}
	if q.KickFd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return nil, err
	}
	if q.CallFd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return nil, err
	}
	// A dup is polled here so that the fd number sent to the back end
	// stays a plain int owned by this struct.
	dup, err := unix.Dup(q.CallFd)
	if err != nil {
		return nil, err
	}
	unix.CloseOnExec(dup)
	q.callFile = os.NewFile(uintptr(dup), fmt.Sprintf("vq%d-call", index))
	return q, nil
}

// Close closes the eventfds.
func (q *DriverQueue) Close() {
	unix.Close(q.KickFd)
	unix.Close(q.CallFd)
	q.callFile.Close()
}

// Free is the number of free descriptors.
func (q *DriverQueue) Free() int { return len(q.free) }

// SetDesc writes descriptor i verbatim (for hostile-guest tests).
func (q *DriverQueue) SetDesc(i uint16, addr uint64, length uint32, flags, next uint16) {
	d := q.desc[16*uint64(i):]
	binary.LittleEndian.PutUint64(d, addr)
	binary.LittleEndian.PutUint32(d[8:], length)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// Publish puts head into the avail ring and advances avail.idx.
func (q *DriverQueue) Publish(head uint16) {
	binary.LittleEndian.PutUint16(q.avail[4+2*uint64(q.availIdx%q.Size):], head)
	q.availIdx++
	q.storeAvail()
}

// SetAvailIdx forces avail.idx (for hostile-guest tests).
func (q *DriverQueue) SetAvailIdx(idx uint16) {
	q.availIdx = idx
	q.storeAvail()
}

// SetNoInterrupt sets or clears VRING_AVAIL_F_NO_INTERRUPT.
func (q *DriverQueue) SetNoInterrupt(on bool) {
	if on {
		q.avail[0] |= 1
	} else {
		q.avail[0] &^= 1
	}
	q.storeAvail()
}

func (q *DriverQueue) storeAvail() {
	flags := uint32(binary.LittleEndian.Uint16(q.avail))
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&q.avail[0])), flags|uint32(q.availIdx)<<16)
}

// Add makes a chain of direct descriptors available (readable ones first).
func (q *DriverQueue) Add(bufs []Buf) (uint16, error) {
	if len(bufs) == 0 || len(bufs) > len(q.free) {
		return 0, errors.New("virtqueue full")
	}
	ids := make([]uint16, len(bufs))
	for i := range bufs {
		ids[i] = q.free[len(q.free)-1-i]
	}
	q.free = q.free[:len(q.free)-len(bufs)]
	for i, b := range bufs {
		flags := uint16(0)
		if b.Write {
			flags |= vhostuser.DescFWrite
		}
		next := uint16(0)
		if i+1 < len(bufs) {
			flags |= vhostuser.DescFNext
			next = ids[i+1]
		}
		q.SetDesc(ids[i], b.GPA, b.Len, flags, next)
	}
	q.chains[ids[0]] = ids
	q.Publish(ids[0])
	return ids[0], nil
}

// AddIndirect makes a chain available through one indirect descriptor.
func (q *DriverQueue) AddIndirect(bufs []Buf) (uint16, error) {
	if len(bufs) == 0 || len(bufs) > maxIndirect || len(q.free) == 0 {
		return 0, errors.New("virtqueue full")
	}
	id := q.free[len(q.free)-1]
	q.free = q.free[:len(q.free)-1]
	t := q.Mem.Bytes(q.indirect[id], 16*len(bufs))
	for i, b := range bufs {
		flags := uint16(0)
		if b.Write {
			flags |= vhostuser.DescFWrite
		}
		next := uint16(0)
		if i+1 < len(bufs) {
			flags |= vhostuser.DescFNext
			next = uint16(i + 1)
		}
		d := t[16*i:]
		binary.LittleEndian.PutUint64(d, b.GPA)
		binary.LittleEndian.PutUint32(d[8:], b.Len)
		binary.LittleEndian.PutUint16(d[12:], flags)
		binary.LittleEndian.PutUint16(d[14:], next)
	}
	q.SetDesc(id, q.indirect[id], uint32(16*len(bufs)), vhostuser.DescFIndirect, 0)
	q.chains[id] = []uint16{id}
	q.Publish(id)
	return id, nil
}

// IndirectTable returns the guest address of head's indirect table.
func (q *DriverQueue) IndirectTable(head uint16) uint64 { return q.indirect[head] }

// Used takes the next used element, if any, and frees its descriptors.
func (q *DriverQueue) Used() (head uint16, n uint32, ok bool) {
	w := atomic.LoadUint32((*uint32)(unsafe.Pointer(&q.used[0])))
	if uint16(w>>16) == q.lastUsed && q.EventIdx {
		// Ask to be called at the next element, then look again.
		binary.LittleEndian.PutUint16(q.avail[4+2*uint64(q.Size):], q.lastUsed)
		atomic.AddUint32(&q.fence, 1)
		w = atomic.LoadUint32((*uint32)(unsafe.Pointer(&q.used[0])))
	}
	if uint16(w>>16) == q.lastUsed {
		return 0, 0, false
	}
	off := 4 + 8*uint64(q.lastUsed%q.Size)
	head = uint16(binary.LittleEndian.Uint32(q.used[off:]))
	n = binary.LittleEndian.Uint32(q.used[off+4:])
	q.lastUsed++
	if ids, found := q.chains[head]; found {
		delete(q.chains, head)
		q.free = append(q.free, ids...)
	}
	return head, n, true
}

// UsedIdx is the used index the device last published.
func (q *DriverQueue) UsedIdx() uint16 {
	return uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&q.used[0]))) >> 16)
}

// Kick notifies the device; with event indices only if the device asked
// for a kick at an index added since the last one.
func (q *DriverQueue) Kick() error {
	if q.EventIdx {
		atomic.AddUint32(&q.fence, 1)
		event := uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&q.used[4+8*uint64(q.Size)]))))
		old := q.lastKick
		q.lastKick = q.availIdx
		if q.availIdx-event-1 >= q.availIdx-old {
			return nil
		}
	}
	_, err := unix.Write(q.KickFd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	if errors.Is(err, unix.EAGAIN) {
		return nil
	}
	return err
}

// WaitCall waits for the device's notification (consuming it).
func (q *DriverQueue) WaitCall(ctx context.Context) error {
	// A cancellation that fires late must not cut the next wait short:
	// deadlines change under waitMu, tagged with the wait they belong to.
	dl, _ := ctx.Deadline() // zero: no deadline
	q.waitMu.Lock()
	q.waitGen++
	gen := q.waitGen
	q.callFile.SetReadDeadline(dl)
	q.waitMu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		q.waitMu.Lock()
		defer q.waitMu.Unlock()
		if q.waitGen == gen {
			q.callFile.SetReadDeadline(aLongTimeAgo)
		}
	})
	defer stop()
	var b [8]byte
	_, err := q.callFile.Read(b[:])
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Reserve takes n free descriptors for a chain the caller writes itself
// with SetDesc (for hostile-guest tests); they are freed when the device
// returns the chain headed by the first one.
func (q *DriverQueue) Reserve(n int) ([]uint16, error) {
	if n <= 0 || n > len(q.free) {
		return nil, errors.New("virtqueue full")
	}
	ids := append([]uint16(nil), q.free[len(q.free)-n:]...)
	q.free = q.free[:len(q.free)-n]
	q.chains[ids[0]] = ids
	return ids, nil
}

// AvailIdx is the driver's avail index.
func (q *DriverQueue) AvailIdx() uint16 { return q.availIdx }

// DrainCall consumes a pending notification, if any, without waiting.
func (q *DriverQueue) DrainCall() {
	var b [8]byte
	unix.Read(q.CallFd, b[:])
}
