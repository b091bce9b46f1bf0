package listener

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// OpenFinder opens a Finder of the given source. SourceAuto returns a
// sock_diag finder that switches to /proc/net for good once the kernel
// refuses a sock_diag query (inet_diag or tcp_diag not built).
func OpenFinder(src Source) (Finder, error) {
	switch src {
	case SourceProcNet:
		return procFinder{}, nil
	case SourceSockDiag:
		return openSockDiag()
	case SourceAuto:
		sd, err := openSockDiag()
		if err != nil {
			if !fallbackLogged.Swap(true) {
				slog.Warn("no sock_diag; finding listeners through /proc/net (slower polls)", "err", err)
			}
			return procFinder{}, nil
		}
		return &autoFinder{sd: sd}, nil
	}
	return nil, fmt.Errorf("open listener finder: unknown source %v", src)
}

// procFinder reads /proc/net/tcp and /proc/net/tcp6.
type procFinder struct{}

func (procFinder) Name() string { return "procnet" }
func (procFinder) Close() error { return nil }

func (procFinder) Listeners(port uint16) ([]Listening, error) {
	var out []Listening
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) && path == "/proc/net/tcp6" {
			continue // kernel without IPv6
		}
		if err != nil {
			return nil, fmt.Errorf("read listeners: %w", err)
		}
		ls, err := parseProcNetTCP(data, port)
		if err != nil {
			return nil, fmt.Errorf("read listeners from %s: %w", path, err)
		}
		out = append(out, ls...)
	}
	return out, nil
}

// autoFinder asks sock_diag and falls back to /proc/net on the first error.
type autoFinder struct {
	sd       *sockDiag
	fallback atomic.Bool
}

// fallbackLogged makes the switch to /proc/net a single warning per agent.
var fallbackLogged atomic.Bool

func (a *autoFinder) Name() string {
	if a.fallback.Load() {
		return "procnet"
	}
	return "sock_diag"
}

func (a *autoFinder) Close() error { return a.sd.Close() }

func (a *autoFinder) Listeners(port uint16) ([]Listening, error) {
	if !a.fallback.Load() {
		ls, err := a.sd.Listeners(port)
		if err == nil {
			return ls, nil
		}
		a.fallback.Store(true)
		if !fallbackLogged.Swap(true) {
			slog.Warn("sock_diag query failed; finding listeners through /proc/net (slower polls)", "err", err)
		}
	}
	return procFinder{}.Listeners(port)
}

// sockDiag queries listening sockets with NETLINK_SOCK_DIAG dumps of
// inet_diag_req_v2, one per address family, filtered in the kernel to
// TCP_LISTEN and the source port (the listener walk compares
// id.idiag_sport), so a query touches only the listening hash.
type sockDiag struct {
	fd  int
	seq uint32
	buf []byte
}

func openSockDiag() (*sockDiag, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("open sock_diag netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind sock_diag netlink socket: %w", err)
	}
	return &sockDiag{fd: fd, buf: make([]byte, 32<<10)}, nil
}

func (s *sockDiag) Name() string { return "sock_diag" }
func (s *sockDiag) Close() error { return unix.Close(s.fd) }

func (s *sockDiag) Listeners(port uint16) ([]Listening, error) {
	var out []Listening
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		ls, err := s.dump(fam, port)
		if err != nil {
			return nil, err
		}
		out = append(out, ls...)
	}
	return out, nil
}

const (
	sizeofReqV2   = 56 // struct inet_diag_req_v2
	sizeofDiagMsg = 72 // struct inet_diag_msg
)

func (s *sockDiag) dump(family uint8, port uint16) ([]Listening, error) {
	s.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+sizeofReqV2)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], s.seq)
	r := req[unix.NLMSG_HDRLEN:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], 1<<tcpListen)       // idiag_states
	binary.BigEndian.PutUint16(r[8:], port) // id.idiag_sport, network order
	if err := unix.Sendto(s.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag query for port %d: %w", port, err)
	}
	var out []Listening
	for {
		n, _, err := unix.Recvfrom(s.fd, s.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sock_diag reply for port %d: %w", port, err)
		}
		b := s.buf[:n]
		for len(b) >= unix.NLMSG_HDRLEN {
			mlen := ne.Uint32(b[0:])
			typ := ne.Uint16(b[4:])
			seq := ne.Uint32(b[8:])
			if mlen < unix.NLMSG_HDRLEN || int(mlen) > len(b) {
				return nil, fmt.Errorf("sock_diag reply for port %d: bad message length %d", port, mlen)
			}
			body := b[unix.NLMSG_HDRLEN:mlen]
			if next := nlmAlign(int(mlen)); next < len(b) {
				b = b[next:]
			} else {
				b = nil
			}
			if seq != s.seq {
				continue // a reply to an earlier, abandoned query
			}
			switch typ {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(body) >= 4 {
					if e := int32(ne.Uint32(body)); e != 0 {
						return nil, fmt.Errorf("sock_diag query for port %d: %w", port, unix.Errno(-e))
					}
				}
				return out, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				if l, ok := parseDiagMsg(body, port); ok {
					out = append(out, l)
				}
			}
		}
	}
}

func nlmAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// parseDiagMsg decodes a struct inet_diag_msg; it checks state and port
// again because older kernels may not filter on idiag_sport.
func parseDiagMsg(m []byte, port uint16) (Listening, bool) {
	if len(m) < sizeofDiagMsg {
		return Listening{}, false
	}
	family, state := m[0], m[1]
	id := m[4:52] // struct inet_diag_sockid
	sport := binary.BigEndian.Uint16(id[0:])
	if state != tcpListen || (port != 0 && sport != port) {
		return Listening{}, false
	}
	var ip netip.Addr
	switch family {
	case unix.AF_INET:
		ip = netip.AddrFrom4([4]byte(id[4:8]))
	case unix.AF_INET6:
		ip = netip.AddrFrom16([16]byte(id[4:20])).Unmap()
	default:
		return Listening{}, false
	}
	return Listening{
		Addr:    netip.AddrPortFrom(ip, sport),
		IfIndex: binary.NativeEndian.Uint32(id[36:]),
	}, true
}
