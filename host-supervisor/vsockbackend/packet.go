package vsockbackend

import (
	"encoding/binary"
	"fmt"
)

// HeaderSize is the size of struct virtio_vsock_hdr.
const HeaderSize = 44

// Packet operations.
const (
	OpInvalid       = 0
	OpRequest       = 1
	OpResponse      = 2
	OpRST           = 3
	OpShutdown      = 4
	OpRW            = 5
	OpCreditUpdate  = 6
	OpCreditRequest = 7
)

// Socket types.
const (
	TypeStream    = 1
	TypeSeqpacket = 2
)

// Shutdown flags.
const (
	ShutdownRcv  = 1
	ShutdownSend = 2
)

// HostCID is the host's address on the vsock bus.
const HostCID = 2

// MaxPacketPayload bounds the payload of one packet; it is Linux's
// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE.
const MaxPacketPayload = 64 * 1024

// Header is a virtio-vsock packet header (little-endian on the wire).
type Header struct {
	SrcCID   uint64
	DstCID   uint64
	SrcPort  uint32
	DstPort  uint32
	Len      uint32
	Type     uint16
	Op       uint16
	Flags    uint32
	BufAlloc uint32
	FwdCnt   uint32
}

// ParseHeader decodes a header from the first 44 bytes of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("vsock header: %d bytes, want %d", len(b), HeaderSize)
	}
	le := binary.LittleEndian
	return Header{
		SrcCID:   le.Uint64(b[0:]),
		DstCID:   le.Uint64(b[8:]),
		SrcPort:  le.Uint32(b[16:]),
		DstPort:  le.Uint32(b[20:]),
		Len:      le.Uint32(b[24:]),
		Type:     le.Uint16(b[28:]),
		Op:       le.Uint16(b[30:]),
		Flags:    le.Uint32(b[32:]),
		BufAlloc: le.Uint32(b[36:]),
		FwdCnt:   le.Uint32(b[40:]),
	}, nil
}

// Put encodes the header into the first 44 bytes of b.
func (h *Header) Put(b []byte) {
	le := binary.LittleEndian
	_ = b[HeaderSize-1]
	le.PutUint64(b[0:], h.SrcCID)
	le.PutUint64(b[8:], h.DstCID)
	le.PutUint32(b[16:], h.SrcPort)
	le.PutUint32(b[20:], h.DstPort)
	le.PutUint32(b[24:], h.Len)
	le.PutUint16(b[28:], h.Type)
	le.PutUint16(b[30:], h.Op)
	le.PutUint32(b[32:], h.Flags)
	le.PutUint32(b[36:], h.BufAlloc)
	le.PutUint32(b[40:], h.FwdCnt)
}

var opNames = [...]string{"INVALID", "REQUEST", "RESPONSE", "RST", "SHUTDOWN", "RW", "CREDIT_UPDATE", "CREDIT_REQUEST"}

// OpName names an operation for logs.
func OpName(op uint16) string {
	if int(op) < len(opNames) {
		return opNames[op]
	}
	return fmt.Sprintf("OP_%d", op)
}

func (h Header) String() string {
	return fmt.Sprintf("%s %d:%d->%d:%d len=%d type=%d flags=%#x buf_alloc=%d fwd_cnt=%d",
		OpName(h.Op), h.SrcCID, h.SrcPort, h.DstCID, h.DstPort, h.Len, h.Type, h.Flags, h.BufAlloc, h.FwdCnt)
}

// Validate checks a packet the guest sent: stream type, addresses, and a
// payload length that the chain holds and that RW alone may carry.
// avail is the number of payload bytes the descriptor chain holds.
func (h *Header) Validate(guestCID uint64, avail uint64) error {
	switch {
	case h.SrcCID != guestCID:
		return fmt.Errorf("source CID %d, guest is %d", h.SrcCID, guestCID)
	case h.DstCID != HostCID:
		return fmt.Errorf("destination CID %d is not the host", h.DstCID)
	case h.Type != TypeStream:
		return fmt.Errorf("socket type %d is not stream", h.Type)
	case h.Op == OpInvalid || h.Op > OpCreditRequest:
		return fmt.Errorf("unknown op %d", h.Op)
	case h.Len > MaxPacketPayload:
		return fmt.Errorf("payload length %d exceeds %d", h.Len, MaxPacketPayload)
	case uint64(h.Len) > avail:
		return fmt.Errorf("payload length %d but the buffer holds %d", h.Len, avail)
	case h.Len != 0 && h.Op != OpRW:
		return fmt.Errorf("%s with a payload of %d bytes", OpName(h.Op), h.Len)
	}
	return nil
}
