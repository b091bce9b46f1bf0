package listener

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
)

// Source selects how listening sockets are found.
type Source int

const (
	// SourceAuto uses sock_diag and falls back to /proc/net when the kernel
	// refuses the netlink query.
	SourceAuto Source = iota
	// SourceSockDiag uses only netlink sock_diag.
	SourceSockDiag
	// SourceProcNet uses only /proc/net/tcp and /proc/net/tcp6.
	SourceProcNet
)

func (s Source) String() string {
	switch s {
	case SourceAuto:
		return "auto"
	case SourceSockDiag:
		return "sock_diag"
	case SourceProcNet:
		return "procnet"
	}
	return "Source(" + strconv.Itoa(int(s)) + ")"
}

// Listening is one TCP socket in state LISTEN.
type Listening struct {
	// Addr is the bound address and port as the kernel reports it; an
	// IPv4-mapped IPv6 address is unmapped. IfIndex is the bound device
	// (SO_BINDTODEVICE or a link-local scope), 0 if none.
	Addr    netip.AddrPort
	IfIndex uint32
}

// Finder lists the listening TCP sockets on a port, IPv4 and IPv6, in the
// caller's network namespace.
type Finder interface {
	Listeners(port uint16) ([]Listening, error)
	// Name says which kernel interface answers ("sock_diag" or "procnet").
	Name() string
	Close() error
}

// tcpListen is TCP_LISTEN in include/net/tcp_states.h; /proc/net/tcp
// prints it as "0A".
const tcpListen = 10

// parseProcNetTCP returns the listening sockets on port from the contents
// of /proc/net/tcp or /proc/net/tcp6. Addresses there are the kernel's
// in-memory words printed in hex, so each 32-bit word is in host byte order.
func parseProcNetTCP(data []byte, port uint16) ([]Listening, error) {
	var out []Listening
	sc := bufio.NewScanner(bytes.NewReader(data))
	first := true
	for sc.Scan() {
		if first { // header line
			first = false
			continue
		}
		f := bytes.Fields(sc.Bytes())
		if len(f) < 4 {
			continue
		}
		st, err := strconv.ParseUint(string(f[3]), 16, 8)
		if err != nil {
			return nil, fmt.Errorf("parse state %q: %w", f[3], err)
		}
		if st != tcpListen {
			continue
		}
		ap, err := parseProcAddrPort(f[1])
		if err != nil {
			return nil, err
		}
		if port != 0 && ap.Port() != port {
			continue
		}
		out = append(out, Listening{Addr: ap})
	}
	return out, sc.Err()
}

// parseProcAddrPort parses "0100007F:1F90" (IPv4) or a 32-hex-digit IPv6
// address followed by ":PORT".
func parseProcAddrPort(b []byte) (netip.AddrPort, error) {
	i := bytes.IndexByte(b, ':')
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("parse address %q: no port", b)
	}
	p, err := strconv.ParseUint(string(b[i+1:]), 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("parse port in %q: %w", b, err)
	}
	raw, err := hex.DecodeString(string(b[:i]))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("parse address %q: %w", b, err)
	}
	var ip netip.Addr
	switch len(raw) {
	case 4:
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], binary.NativeEndian.Uint32(raw))
		ip = netip.AddrFrom4(a)
	case 16:
		var a [16]byte
		for w := 0; w < 4; w++ {
			binary.BigEndian.PutUint32(a[4*w:], binary.NativeEndian.Uint32(raw[4*w:]))
		}
		ip = netip.AddrFrom16(a).Unmap()
	default:
		return netip.AddrPort{}, fmt.Errorf("parse address %q: %d bytes", b, len(raw))
	}
	return netip.AddrPortFrom(ip, uint16(p)), nil
}
