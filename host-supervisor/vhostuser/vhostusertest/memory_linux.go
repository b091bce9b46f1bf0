package vhostusertest

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// GuestMemory is guest RAM in a memfd, mapped here as the guest sees it.
type GuestMemory struct {
	Fd   int
	Data []byte
	GPA  uint64 // guest-physical address of Data[0]
	UVA  uint64 // the "front-end virtual address" reported for Data[0]

	mu   sync.Mutex
	next uint64
}

// NewGuestMemory creates size bytes of guest memory at guest-physical
// address gpa. uva is the front-end address announced in SET_MEM_TABLE; it
// differs from gpa so that the two translations are both exercised.
func NewGuestMemory(size int, gpa, uva uint64) (*GuestMemory, error) {
	fd, err := unix.MemfdCreate("vhostusertest-guest", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ftruncate memfd: %w", err)
	}
	data, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mmap memfd: %w", err)
	}
	return &GuestMemory{Fd: fd, Data: data, GPA: gpa, UVA: uva}, nil
}

// Alloc reserves size bytes aligned to align and returns their guest address.
func (m *GuestMemory) Alloc(size, align uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	off := (m.next + align - 1) &^ (align - 1)
	if off+size > uint64(len(m.Data)) {
		return 0, fmt.Errorf("guest memory exhausted: %d bytes wanted, %d left", size, uint64(len(m.Data))-off)
	}
	m.next = off + size
	return m.GPA + off, nil
}

// Bytes returns the guest memory at gpa.
func (m *GuestMemory) Bytes(gpa uint64, n int) []byte {
	off := gpa - m.GPA
	return m.Data[off : off+uint64(n) : off+uint64(n)]
}

// UserAddr translates a guest address into the announced front-end address.
func (m *GuestMemory) UserAddr(gpa uint64) uint64 { return gpa - m.GPA + m.UVA }

// Close unmaps and closes the memfd.
func (m *GuestMemory) Close() error {
	err := unix.Munmap(m.Data)
	unix.Close(m.Fd)
	return err
}
