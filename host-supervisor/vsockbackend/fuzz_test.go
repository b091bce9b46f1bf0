package vsockbackend

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/sailbox/sailbox/host-supervisor/vhostuser"
)

func hdrBytes(h Header) []byte {
	b := make([]byte, HeaderSize)
	h.Put(b)
	return b
}

func FuzzParseHeader(f *testing.F) {
	f.Add(hdrBytes(Header{SrcCID: 3, DstCID: 2, SrcPort: 1025, DstPort: 10000, Type: TypeStream, Op: OpRequest, BufAlloc: 262144}), uint64(0))
	f.Add(hdrBytes(Header{SrcCID: 3, DstCID: 2, Len: 4096, Type: TypeStream, Op: OpRW}), uint64(4096))
	f.Add(hdrBytes(Header{SrcCID: 3, DstCID: 2, Len: 1 << 31, Type: TypeStream, Op: OpRW}), uint64(100))
	f.Add([]byte{1, 2, 3}, uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, avail uint64) {
		h, err := ParseHeader(b)
		if err != nil {
			if len(b) >= HeaderSize {
				t.Fatalf("ParseHeader(%d bytes): %v", len(b), err)
			}
			return
		}
		out := make([]byte, HeaderSize)
		h.Put(out)
		if string(out) != string(b[:HeaderSize]) {
			t.Fatalf("round trip changed the header: %x -> %x", b[:HeaderSize], out)
		}
		if h.Validate(3, avail) == nil {
			if h.Len > MaxPacketPayload || uint64(h.Len) > avail || h.Type != TypeStream || h.SrcCID != 3 || h.DstCID != HostCID {
				t.Fatalf("Validate accepted %v with %d bytes", h, avail)
			}
		}
		_ = h.String()
	})
}

func FuzzParseConnect(f *testing.F) {
	for _, s := range []string{"CONNECT 10000\n", "CONNECT 0\r\n", "CONNECT 4294967296\n", "CONNECT -1\n", "CONNECT\n", "connect 1\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		port, err := ParseConnect(line)
		if err != nil {
			return
		}
		again, err := ParseConnect(fmt.Sprintf("CONNECT %d\n", port))
		if err != nil || again != port {
			t.Fatalf("%q parsed as %d, which does not round-trip (%d, %v)", line, port, again, err)
		}
	})
}

// FuzzTxPacket feeds arbitrary guest packets, split over up to three
// segments, to the device, with one established connection at
// host port 1024 / guest port 2048 whose host side is a socketpair.
func FuzzTxPacket(f *testing.F) {
	f.Add(hdrBytes(Header{SrcCID: 3, DstCID: 2, SrcPort: 2048, DstPort: 1024, Type: TypeStream, Op: OpRW, Len: 5}), []byte("hello"), uint8(10), uint8(3))
	f.Add(hdrBytes(Header{SrcCID: 3, DstCID: 2, SrcPort: 2048, DstPort: 1024, Type: TypeStream, Op: OpShutdown, Flags: 3}), []byte{}, uint8(0), uint8(0))
	f.Add(hdrBytes(Header{SrcCID: 3, DstCID: 2, SrcPort: 2048, DstPort: 1024, Type: TypeStream, Op: OpRST}), []byte{}, uint8(44), uint8(0))
	f.Add(hdrBytes(Header{SrcCID: 3, DstCID: 2, SrcPort: 7, DstPort: 8, Type: TypeStream, Op: OpRW, Len: 100}), []byte("x"), uint8(0), uint8(0))
	f.Add(hdrBytes(Header{SrcCID: 3, DstCID: 2, SrcPort: 2048, DstPort: 1024, Type: TypeStream, Op: OpCreditRequest}), []byte{}, uint8(1), uint8(1))
	dir := f.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, hdr, payload []byte, cut1, cut2 uint8) {
		d := newDevice(3, filepath.Join(dir, "none"), log, &Stats{}, func(error) {})
		a, b, err := unixPair()
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		vc := d.newConn(connKey{hostPort: 1024, guestPort: 2048}, stEstablished)
		vc.uc, vc.r, vc.peerBufAlloc = a, a, 1<<16
		pkt := append(append([]byte{}, hdr...), payload...)
		i := min(int(cut1), len(pkt))
		j := min(i+int(cut2), len(pkt))
		c := &vhostuser.Chain{R: [][]byte{pkt[:i], pkt[i:j], pkt[j:]}, RLen: uint64(len(pkt))}
		d.mu.Lock()
		d.handleTx(c)
		d.handleTx(c)
		d.mu.Unlock()
		if vc.wlen > len(vc.wbuf) {
			t.Fatalf("buffered %d bytes in a %d-byte buffer", vc.wlen, len(vc.wbuf))
		}
		d.shutdown()
	})
}

func unixPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := socketpair()
	if err != nil {
		return nil, nil, err
	}
	var cs [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, nil, err
		}
		cs[i] = c.(*net.UnixConn)
	}
	return cs[0], cs[1], nil
}
