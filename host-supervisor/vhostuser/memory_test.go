package vhostuser

import "testing"

func TestMemoryTranslation(t *testing.T) {
	a := make([]byte, 4096)
	b := make([]byte, 4096)
	m, err := NewMemory([]Region{{GuestAddr: 0x1000, UserAddr: 0x70000, Data: a}, {GuestAddr: 0x2000, UserAddr: 0x90000, Data: b}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.Slice(0x1ff0, 32)
	if err != nil || len(s) != 16 || &s[0] != &a[4080] {
		t.Fatalf("Slice across regions: len %d, %v", len(s), err)
	}
	if s, err = m.Slice(0x2000, 32); err != nil || &s[0] != &b[0] {
		t.Fatalf("Slice in the second region: %v", err)
	}
	if _, err := m.Slice(0x3000, 1); err == nil {
		t.Fatal("Slice past the end succeeded")
	}
	if _, err := m.Slice(0, 1); err == nil {
		t.Fatal("Slice before the start succeeded")
	}
	if s, err = m.UserSlice(0x90010, 16); err != nil || &s[0] != &b[16] {
		t.Fatalf("UserSlice: %v", err)
	}
	if _, err := m.UserSlice(0x70ff0, 32); err == nil {
		t.Fatal("UserSlice crossing a region end succeeded")
	}
	if _, err := m.UserSlice(0x70000, 1<<63); err == nil {
		t.Fatal("UserSlice with a huge length succeeded")
	}
	if _, err := NewMemory([]Region{{GuestAddr: 0x1000, Data: a}, {GuestAddr: 0x1800, UserAddr: 1 << 20, Data: b}}); err == nil {
		t.Fatal("overlapping regions accepted")
	}
	if _, err := NewMemory([]Region{{GuestAddr: ^uint64(0) - 10, Data: a}}); err == nil {
		t.Fatal("wrapping region accepted")
	}
}
