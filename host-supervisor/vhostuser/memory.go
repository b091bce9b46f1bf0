package vhostuser

import (
	"fmt"
)

// Region is one contiguous piece of guest memory mapped into this process.
type Region struct {
	GuestAddr uint64 // guest-physical address of Data[0]
	UserAddr  uint64 // front-end virtual address of Data[0]
	Data      []byte
}

// Memory is the guest memory as the front end described it. The zero value
// maps nothing. It is immutable once built; a new SET_MEM_TABLE builds a new
// Memory.
type Memory struct {
	regions []Region
	unmap   func() error
}

// NewMemory builds a Memory from regions that must not overlap (in guest
// or user addresses) and must not wrap the address space.
func NewMemory(regions []Region) (*Memory, error) {
	for i, r := range regions {
		n := uint64(len(r.Data))
		if n == 0 {
			return nil, fmt.Errorf("memory region %d: empty", i)
		}
		if r.GuestAddr+n < r.GuestAddr || r.UserAddr+n < r.UserAddr {
			return nil, fmt.Errorf("memory region %d: gpa %#x/uva %#x size %#x wraps", i, r.GuestAddr, r.UserAddr, n)
		}
		for j, o := range regions[:i] {
			m := uint64(len(o.Data))
			if r.GuestAddr < o.GuestAddr+m && o.GuestAddr < r.GuestAddr+n {
				return nil, fmt.Errorf("memory regions %d and %d overlap in guest addresses", j, i)
			}
		}
	}
	return &Memory{regions: regions}, nil
}

// Close unmaps the regions if the Memory owns mappings.
func (m *Memory) Close() error {
	if m == nil || m.unmap == nil {
		return nil
	}
	err := m.unmap()
	m.unmap = nil
	return err
}

// Regions returns the regions (for diagnostics).
func (m *Memory) Regions() []Region { return m.regions }

// Slice returns the guest memory at guest-physical address gpa, at most n
// bytes long: shorter when the range crosses out of a region (the caller
// continues at gpa+len). It fails when gpa is not mapped.
func (m *Memory) Slice(gpa uint64, n uint32) ([]byte, error) {
	for i := range m.regions {
		r := &m.regions[i]
		if gpa >= r.GuestAddr && gpa-r.GuestAddr < uint64(len(r.Data)) {
			off := gpa - r.GuestAddr
			end := off + uint64(n)
			if end > uint64(len(r.Data)) {
				end = uint64(len(r.Data))
			}
			return r.Data[off:end:end], nil
		}
	}
	return nil, fmt.Errorf("guest address %#x is not in guest memory", gpa)
}

// UserSlice returns exactly n bytes at front-end virtual address uva, which
// must lie within one region (rings are never split across regions by QEMU).
func (m *Memory) UserSlice(uva, n uint64) ([]byte, error) {
	for i := range m.regions {
		r := &m.regions[i]
		if uva >= r.UserAddr && uva-r.UserAddr < uint64(len(r.Data)) {
			off := uva - r.UserAddr
			if n > uint64(len(r.Data))-off {
				return nil, fmt.Errorf("user address %#x+%#x crosses the end of its region", uva, n)
			}
			return r.Data[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("user address %#x is not in guest memory", uva)
}
