package vhostuser

import (
	"encoding/binary"
	"errors"
	"testing"
)

// fuzzQueue lays a 16-entry ring over 64 KiB of memory whose contents the
// fuzzer controls: descriptor table at 0, avail ring at 0x100, used ring at
// 0x200, buffers anywhere.
func fuzzQueue(t *testing.T, data []byte, indirect, eventIdx bool, base uint16) (*Queue, []byte) {
	buf := make([]byte, 64<<10)
	copy(buf, data)
	mem, err := NewMemory([]Region{{GuestAddr: 0x10000, UserAddr: 0x7000_0000, Data: buf}})
	if err != nil {
		t.Fatal(err)
	}
	q, err := NewQueue(mem, QueueConfig{Size: 16, Desc: 0x7000_0000, Avail: 0x7000_0100, Used: 0x7000_0200, Base: base, Indirect: indirect, EventIdx: eventIdx, Call: func() error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return q, buf
}

func desc(addr uint64, n uint32, flags, next uint16) []byte {
	b := binary.LittleEndian.AppendUint64(nil, addr)
	b = binary.LittleEndian.AppendUint32(b, n)
	b = binary.LittleEndian.AppendUint16(b, flags)
	return binary.LittleEndian.AppendUint16(b, next)
}

func seedRing(descs [][]byte, avail []uint16) []byte {
	b := make([]byte, 0x100)
	for i, d := range descs {
		copy(b[16*i:], d)
	}
	a := binary.LittleEndian.AppendUint16(nil, 0)
	a = binary.LittleEndian.AppendUint16(a, uint16(len(avail)))
	for _, h := range avail {
		a = binary.LittleEndian.AppendUint16(a, h)
	}
	return append(b, a...)
}

func FuzzQueuePop(f *testing.F) {
	f.Add(seedRing([][]byte{desc(0x11000, 44, DescFNext, 1), desc(0x12000, 100, DescFWrite, 0)}, []uint16{0}), true, uint16(0))
	f.Add(seedRing([][]byte{desc(0x11000, 44, DescFNext, 0)}, []uint16{0}), false, uint16(0))                                   // loop
	f.Add(seedRing([][]byte{desc(0x13000, 32, DescFIndirect, 0)}, []uint16{0, 0, 0}), true, uint16(0))                          // indirect
	f.Add(seedRing([][]byte{desc(0x1fff0, 0xffffffff, 0, 0), desc(0, 1, DescFWrite, 0)}, []uint16{0, 1, 17}), false, uint16(0)) // out of range
	f.Add(seedRing(nil, []uint16{5}), true, uint16(65535))
	f.Fuzz(func(t *testing.T, data []byte, indirect bool, base uint16) {
		// The low bit of base picks event-index mode.
		q, _ := fuzzQueue(t, data, indirect, base&1 == 1, base)
		var c Chain
		for range 64 {
			err := q.Pop(&c)
			if err == ErrEmpty {
				return
			}
			var ce *ChainError
			if errors.As(err, &ce) {
				if ce.Head >= q.Size() {
					t.Fatalf("chain error with head %d outside the ring", ce.Head)
				}
				q.Push(ce.Head, 0)
				continue
			}
			var be *BrokenError
			if errors.As(err, &be) {
				return
			}
			if err != nil {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			var r, w uint64
			for _, s := range c.R {
				r += uint64(len(s))
			}
			for _, s := range c.W {
				w += uint64(len(s))
			}
			if r != c.RLen || w != c.WLen {
				t.Fatalf("lengths %d/%d, segments hold %d/%d", c.RLen, c.WLen, r, w)
			}
			q.Push(c.Head, uint32(min(c.WLen, 1<<31)))
			q.Notify()
		}
	})
}

// FuzzServerHandle feeds arbitrary requests to the message handler (no fds,
// so no memory is mapped): nothing may panic.
func FuzzServerHandle(f *testing.F) {
	f.Add(uint32(reqSetVringAddr), VringAddr{Index: 0, Desc: 1, Used: 2, Avail: 3}.Marshal())
	f.Add(uint32(reqSetVringNum), VringState{0, 256}.Marshal())
	f.Add(uint32(reqGetConfig), ConfigMsg{Offset: 0, Size: 8}.Marshal())
	f.Add(uint32(reqSetMemTable), MarshalMemTable([]RegionDesc{{GuestAddr: 0, Size: 4096}}))
	f.Add(uint32(reqGetVringBase), VringState{9, 0}.Marshal())
	f.Add(uint32(reqSetVringCall), U64(VringNoFd|1))
	f.Fuzz(func(t *testing.T, req uint32, payload []byte) {
		s := &Server{dev: nopDevice{}, log: discardLogger()}
		s.vrings = []*vring{{}, {}}
		s.handle(Header{Request: req, Flags: FlagVersion, Size: uint32(len(payload))}, payload, nil)
		s.handle(Header{Request: reqSetVringEnable, Flags: FlagVersion, Size: 8}, VringState{0, 1}.Marshal(), nil)
	})
}
