package vhostuser

import (
	"encoding/binary"
	"fmt"
)

// Request codes of front-end → back-end messages (vhost-user spec).
const (
	reqGetFeatures         = 1
	reqSetFeatures         = 2
	reqSetOwner            = 3
	reqResetOwner          = 4
	reqSetMemTable         = 5
	reqSetLogBase          = 6
	reqSetLogFd            = 7
	reqSetVringNum         = 8
	reqSetVringAddr        = 9
	reqSetVringBase        = 10
	reqGetVringBase        = 11
	reqSetVringKick        = 12
	reqSetVringCall        = 13
	reqSetVringErr         = 14
	reqGetProtocolFeatures = 15
	reqSetProtocolFeatures = 16
	reqGetQueueNum         = 17
	reqSetVringEnable      = 18
	reqGetConfig           = 24
	reqSetConfig           = 25
	reqResetDevice         = 34
	reqGetMaxMemSlots      = 36
)

// Exported request codes, for front ends written in tests.
const (
	ReqGetFeatures         = reqGetFeatures
	ReqSetFeatures         = reqSetFeatures
	ReqSetOwner            = reqSetOwner
	ReqSetMemTable         = reqSetMemTable
	ReqSetVringNum         = reqSetVringNum
	ReqSetVringAddr        = reqSetVringAddr
	ReqSetVringBase        = reqSetVringBase
	ReqGetVringBase        = reqGetVringBase
	ReqSetVringKick        = reqSetVringKick
	ReqSetVringCall        = reqSetVringCall
	ReqSetVringErr         = reqSetVringErr
	ReqGetProtocolFeatures = reqGetProtocolFeatures
	ReqSetProtocolFeatures = reqSetProtocolFeatures
	ReqGetQueueNum         = reqGetQueueNum
	ReqSetVringEnable      = reqSetVringEnable
	ReqGetConfig           = reqGetConfig
)

var reqNames = map[uint32]string{
	1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER",
	5: "SET_MEM_TABLE", 6: "SET_LOG_BASE", 7: "SET_LOG_FD", 8: "SET_VRING_NUM",
	9: "SET_VRING_ADDR", 10: "SET_VRING_BASE", 11: "GET_VRING_BASE",
	12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 14: "SET_VRING_ERR",
	15: "GET_PROTOCOL_FEATURES", 16: "SET_PROTOCOL_FEATURES", 17: "GET_QUEUE_NUM",
	18: "SET_VRING_ENABLE", 19: "SEND_RARP", 20: "NET_SET_MTU", 21: "SET_BACKEND_REQ_FD",
	22: "IOTLB_MSG", 23: "SET_VRING_ENDIAN", 24: "GET_CONFIG", 25: "SET_CONFIG",
	31: "GET_INFLIGHT_FD", 32: "SET_INFLIGHT_FD", 34: "RESET_DEVICE", 36: "GET_MAX_MEM_SLOTS",
	37: "ADD_MEM_REG", 38: "REM_MEM_REG", 39: "SET_STATUS", 40: "GET_STATUS",
}

// RequestName names a request code for logs.
func RequestName(r uint32) string {
	if n, ok := reqNames[r]; ok {
		return n
	}
	return fmt.Sprintf("REQUEST_%d", r)
}

// Header flags.
const (
	FlagVersion   = 0x1
	FlagReply     = 0x4
	FlagNeedReply = 0x8
)

// Virtio and vhost-user feature bits.
const (
	FeatureIndirectDesc     = 1 << 28 // VIRTIO_RING_F_INDIRECT_DESC
	FeatureEventIdx         = 1 << 29 // VIRTIO_RING_F_EVENT_IDX
	FeatureProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FeatureVersion1         = 1 << 32 // VIRTIO_F_VERSION_1
)

// Protocol feature bits.
const (
	ProtocolFeatureMQ       = 1 << 0
	ProtocolFeatureReplyAck = 1 << 3
	ProtocolFeatureConfig   = 1 << 9
)

// HeaderSize is the size of the vhost-user message header.
const HeaderSize = 12

// MaxPayload bounds a message payload; the largest message this back end
// accepts is SET_MEM_TABLE with MaxRegions regions (8 + 32*8 bytes) or a
// GET_CONFIG of 256 bytes of config space.
const MaxPayload = 4096

// MaxRegions is the number of memory regions in SET_MEM_TABLE (the
// VHOST_MEMORY_BASELINE_NREGIONS of the spec).
const MaxRegions = 8

// MaxFds bounds the file descriptors accepted with one message.
const MaxFds = MaxRegions

// vringIndexMask and vringNoFd decode the u64 of SET_VRING_KICK/CALL/ERR.
const (
	vringIndexMask = 0xff
	VringNoFd      = 0x100
)

// Header is the fixed part of every message.
type Header struct {
	Request uint32
	Flags   uint32
	Size    uint32
}

func (h Header) put(b []byte) {
	binary.LittleEndian.PutUint32(b[0:], h.Request)
	binary.LittleEndian.PutUint32(b[4:], h.Flags)
	binary.LittleEndian.PutUint32(b[8:], h.Size)
}

// ParseHeader decodes a message header and checks version and size.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("vhost-user header: %d bytes, want %d", len(b), HeaderSize)
	}
	h := Header{
		Request: binary.LittleEndian.Uint32(b[0:]),
		Flags:   binary.LittleEndian.Uint32(b[4:]),
		Size:    binary.LittleEndian.Uint32(b[8:]),
	}
	if h.Flags&0x3 != FlagVersion {
		return h, fmt.Errorf("vhost-user %s: unsupported version %d", RequestName(h.Request), h.Flags&0x3)
	}
	if h.Size > MaxPayload {
		return h, fmt.Errorf("vhost-user %s: payload %d bytes exceeds %d", RequestName(h.Request), h.Size, MaxPayload)
	}
	return h, nil
}

// MarshalMessage encodes a header and payload into one buffer.
func MarshalMessage(request, flags uint32, payload []byte) []byte {
	b := make([]byte, HeaderSize+len(payload))
	Header{Request: request, Flags: flags | FlagVersion, Size: uint32(len(payload))}.put(b)
	copy(b[HeaderSize:], payload)
	return b
}

// U64 encodes a u64 payload.
func U64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// VringState is the payload of SET_VRING_NUM/BASE/ENABLE and GET_VRING_BASE.
type VringState struct {
	Index uint32
	Num   uint32
}

// Marshal encodes the state.
func (s VringState) Marshal() []byte {
	b := binary.LittleEndian.AppendUint32(nil, s.Index)
	return binary.LittleEndian.AppendUint32(b, s.Num)
}

func parseVringState(p []byte) (VringState, error) {
	if len(p) < 8 {
		return VringState{}, fmt.Errorf("vring state: %d bytes, want 8", len(p))
	}
	return VringState{binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:])}, nil
}

// VringAddr is the payload of SET_VRING_ADDR. Addresses are front-end
// (QEMU) virtual addresses, translated through the regions' UserAddr.
type VringAddr struct {
	Index uint32
	Flags uint32
	Desc  uint64
	Used  uint64
	Avail uint64
	Log   uint64
}

// Marshal encodes the address message.
func (a VringAddr) Marshal() []byte {
	b := binary.LittleEndian.AppendUint32(nil, a.Index)
	b = binary.LittleEndian.AppendUint32(b, a.Flags)
	for _, v := range []uint64{a.Desc, a.Used, a.Avail, a.Log} {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

func parseVringAddr(p []byte) (VringAddr, error) {
	if len(p) < 40 {
		return VringAddr{}, fmt.Errorf("vring addr: %d bytes, want 40", len(p))
	}
	le := binary.LittleEndian
	return VringAddr{le.Uint32(p), le.Uint32(p[4:]), le.Uint64(p[8:]), le.Uint64(p[16:]), le.Uint64(p[24:]), le.Uint64(p[32:])}, nil
}

// RegionDesc describes one SET_MEM_TABLE region.
type RegionDesc struct {
	GuestAddr  uint64
	Size       uint64
	UserAddr   uint64
	MmapOffset uint64
}

// MarshalMemTable encodes a SET_MEM_TABLE payload.
func MarshalMemTable(regions []RegionDesc) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(regions)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, r := range regions {
		for _, v := range []uint64{r.GuestAddr, r.Size, r.UserAddr, r.MmapOffset} {
			b = binary.LittleEndian.AppendUint64(b, v)
		}
	}
	return b
}

func parseMemTable(p []byte) ([]RegionDesc, error) {
	if len(p) < 8 {
		return nil, fmt.Errorf("mem table: %d bytes", len(p))
	}
	n := binary.LittleEndian.Uint32(p)
	if n == 0 || n > MaxRegions {
		return nil, fmt.Errorf("mem table: %d regions (1..%d allowed)", n, MaxRegions)
	}
	if len(p) < 8+int(n)*32 {
		return nil, fmt.Errorf("mem table: %d bytes for %d regions", len(p), n)
	}
	rs := make([]RegionDesc, n)
	for i := range rs {
		o := p[8+i*32:]
		rs[i] = RegionDesc{binary.LittleEndian.Uint64(o), binary.LittleEndian.Uint64(o[8:]), binary.LittleEndian.Uint64(o[16:]), binary.LittleEndian.Uint64(o[24:])}
	}
	return rs, nil
}

// ConfigMsg is the payload of GET_CONFIG/SET_CONFIG.
type ConfigMsg struct {
	Offset, Size, Flags uint32
	Data                []byte
}

// Marshal encodes the config message.
func (c ConfigMsg) Marshal() []byte {
	b := binary.LittleEndian.AppendUint32(nil, c.Offset)
	b = binary.LittleEndian.AppendUint32(b, c.Size)
	b = binary.LittleEndian.AppendUint32(b, c.Flags)
	return append(b, c.Data...)
}

// ParseConfigMsg decodes a config message.
func ParseConfigMsg(p []byte) (ConfigMsg, error) {
	if len(p) < 12 {
		return ConfigMsg{}, fmt.Errorf("config msg: %d bytes", len(p))
	}
	c := ConfigMsg{Offset: binary.LittleEndian.Uint32(p), Size: binary.LittleEndian.Uint32(p[4:]), Flags: binary.LittleEndian.Uint32(p[8:])}
	if c.Size > 256 || int(c.Size) > len(p)-12 {
		return c, fmt.Errorf("config msg: size %d with %d payload bytes", c.Size, len(p)-12)
	}
	c.Data = p[12 : 12+c.Size]
	return c, nil
}
