package netfilter

import (
	"encoding/binary"
	"net/netip"
)

// pkt describes a crafted frame for BPF_PROG_TEST_RUN.
type pkt struct {
	src, dst netip.Addr
	sport    uint16
	dport    uint16
	proto    uint8   // 0 = TCP
	vlans    int     // in-band 802.1Q tags
	ext      []uint8 // IPv6 extension headers before the upper layer (0, 43, 60, 51, 44)
	fragOff  uint16  // fragment offset in 8-byte units (IPv4 header or IPv6 fragment header)
	moreFrag bool    // MF flag
	ihl      int     // IPv4 header length in words; 0 = 5
	truncate int     // bytes cut from the end
	l4len    int     // bytes of L4 header; 0 = 20
	etype    uint16  // override ethertype
}

const (
	protoTCP = 6
	protoUDP = 17
)

func (p pkt) bytes() []byte {
	b := make([]byte, 0, 128)
	b = append(b, 0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1) // dst, src MAC
	l3 := uint16(0x86dd)
	if p.src.Is4() {
		l3 = 0x0800
	}
	for range p.vlans {
		b = binary.BigEndian.AppendUint16(b, 0x8100)
		b = binary.BigEndian.AppendUint16(b, 42)
	}
	if p.etype != 0 {
		l3 = p.etype
	}
	b = binary.BigEndian.AppendUint16(b, l3)
	proto := p.proto
	if proto == 0 {
		proto = protoTCP
	}
	l4len := p.l4len
	if l4len == 0 {
		l4len = 20
	}
	l4 := make([]byte, l4len)
	if l4len >= 4 {
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
	}
	if l4len >= 14 {
		l4[12] = 5 << 4
		l4[13] = 0x02 // SYN
	}
	if p.src.Is4() {
		ihl := p.ihl
		if ihl == 0 {
			ihl = 5
		}
		h := make([]byte, max(ihl*4, 20))
		h[0] = 0x40 | byte(ihl)
		binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(l4)))
		frag := p.fragOff & 0x1fff
		if p.moreFrag {
			frag |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], frag)
		h[8] = 64
		h[9] = proto
		src, dst := p.src.As4(), p.dst.As4()
		copy(h[12:], src[:])
		copy(h[16:], dst[:])
		b = append(b, h...)
	} else {
		var chain []byte
		next := proto
		for i := len(p.ext) - 1; i >= 0; i-- {
			var h []byte
			switch p.ext[i] {
			case 44:
				h = make([]byte, 8)
				v := p.fragOff << 3
				if p.moreFrag {
					v |= 1
				}
				binary.BigEndian.PutUint16(h[2:], v)
			case 51: // AH: length in 4-byte units minus 2
				h = make([]byte, 16)
				h[1] = 2
			default: // 8 bytes per unit, minus one
				h = make([]byte, 16)
				h[1] = 1
			}
			h[0] = next
			next = p.ext[i]
			chain = append(h, chain...)
		}
		h := make([]byte, 40)
		h[0] = 0x60
		binary.BigEndian.PutUint16(h[4:], uint16(len(chain)+len(l4)))
		h[6] = next
		h[7] = 64
		src, dst := p.src.As16(), p.dst.As16()
		copy(h[8:], src[:])
		copy(h[24:], dst[:])
		b = append(b, h...)
		b = append(b, chain...)
	}
	b = append(b, l4...)
	return b[:len(b)-p.truncate]
}
