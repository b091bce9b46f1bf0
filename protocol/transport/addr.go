package transport

import (
	"fmt"
	"strconv"
	"strings"
)

// Scheme is an address scheme.
type Scheme string

const (
	SchemeVsock  Scheme = "vsock"
	SchemeHvsock Scheme = "hvsock"
	SchemeUnix   Scheme = "unix"
)

// Addr is a parsed agent address.
type Addr struct {
	Scheme Scheme
	// CID is the vsock context id (vsock only); AnyCID when listening on any.
	CID uint32
	// Port is the vsock port (vsock and hvsock).
	Port uint32
	// Path is the unix socket path (unix and hvsock).
	Path string
}

// AnyCID marks a vsock address without a CID (vsock://:PORT).
const AnyCID = ^uint32(0)

// HostCID is the vsock CID of the host. The host supervisor never dials it:
// it dials guests, and on a nested VM CID 2 is somebody else's host.
const HostCID = 2

func (a Addr) String() string {
	switch a.Scheme {
	case SchemeVsock:
		if a.CID == AnyCID {
			return fmt.Sprintf("vsock://:%d", a.Port)
		}
		return fmt.Sprintf("vsock://%d:%d", a.CID, a.Port)
	case SchemeHvsock:
		return fmt.Sprintf("hvsock://%s:%d", a.Path, a.Port)
	case SchemeUnix:
		return "unix://" + a.Path
	}
	return string(a.Scheme) + "://?"
}

// Parse parses an agent address. It never touches the network.
func Parse(s string) (Addr, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Addr{}, fmt.Errorf("address %q: missing scheme (want vsock://, hvsock:// or unix://)", s)
	}
	switch Scheme(scheme) {
	case SchemeVsock:
		host, port, ok := strings.Cut(rest, ":")
		if !ok {
			return Addr{}, fmt.Errorf("address %q: want vsock://CID:PORT", s)
		}
		p, err := parsePort(port)
		if err != nil {
			return Addr{}, fmt.Errorf("address %q: %w", s, err)
		}
		a := Addr{Scheme: SchemeVsock, CID: AnyCID, Port: p}
		if host != "" {
			cid, err := strconv.ParseUint(host, 10, 32)
			if err != nil || uint32(cid) == AnyCID {
				return Addr{}, fmt.Errorf("address %q: bad CID %q", s, host)
			}
			a.CID = uint32(cid)
		}
		return a, nil
	case SchemeHvsock:
		i := strings.LastIndexByte(rest, ':')
		if i <= 0 {
			return Addr{}, fmt.Errorf("address %q: want hvsock:///path/to/vm.vsock:PORT", s)
		}
		p, err := parsePort(rest[i+1:])
		if err != nil {
			return Addr{}, fmt.Errorf("address %q: %w", s, err)
		}
		if !strings.HasPrefix(rest[:i], "/") {
			return Addr{}, fmt.Errorf("address %q: socket path must be absolute", s)
		}
		return Addr{Scheme: SchemeHvsock, Path: rest[:i], Port: p}, nil
	case SchemeUnix:
		if rest == "" {
			return Addr{}, fmt.Errorf("address %q: empty socket path", s)
		}
		return Addr{Scheme: SchemeUnix, Path: rest}, nil
	}
	return Addr{}, fmt.Errorf("address %q: unknown scheme %q (want vsock, hvsock or unix)", s, scheme)
}

func parsePort(s string) (uint32, error) {
	p, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad port %q", s)
	}
	return uint32(p), nil
}
