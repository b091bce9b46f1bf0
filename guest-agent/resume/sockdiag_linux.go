package resume

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SockDiag finds TCP sockets with sock_diag (NETLINK_SOCK_DIAG) and destroys
// them with SOCK_DESTROY, which needs CONFIG_INET_DIAG_DESTROY and
// CAP_NET_ADMIN. A destroyed socket fails with ECONNABORTED locally and its
// peer gets a RST. It works in the calling thread's network namespace.
type SockDiag struct{}

// TCP states (include/net/tcp_states.h) whose sockets are connections:
// everything but LISTEN, TIME_WAIT, CLOSE and the request minisockets.
const droppableStates = 1<<1 | // ESTABLISHED
	1<<2 | // SYN_SENT
	1<<3 | // SYN_RECV
	1<<4 | // FIN_WAIT1
	1<<5 | // FIN_WAIT2
	1<<8 | // CLOSE_WAIT
	1<<9 | // LAST_ACK
	1<<11 // CLOSING

const (
	sizeofDiagReq   = 56 // struct inet_diag_req_v2
	sizeofDiagMsg   = 72 // struct inet_diag_msg
	sizeofSockID    = 48 // struct inet_diag_sockid
	sockDiagByFam   = 20 // SOCK_DIAG_BY_FAMILY
	sockDiagDestroy = 21 // SOCK_DESTROY
)

type diagSock struct {
	family uint8
	id     [sizeofSockID]byte // raw inet_diag_sockid, echoed back to SOCK_DESTROY
	conn   Conn
}

// ErrNoSockDestroy means the kernel lacks CONFIG_INET_DIAG_DESTROY.
var ErrNoSockDestroy = errors.New("kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY not set)")

func (SockDiag) DropEstablished(ctx context.Context, keep func(Conn) bool) (dropped, kept int, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, 0, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, 0, fmt.Errorf("sock_diag bind: %w", err)
	}
	var socks []diagSock
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		s, err := dumpTCP(fd, fam)
		if errors.Is(err, unix.ENOENT) {
			// No handler for the family: CONFIG_INET_DIAG/tcp_diag missing.
			return 0, 0, status.Errorf(codes.FailedPrecondition, "%v (is the tcp_diag module loaded?)", err)
		}
		if err != nil {
			return 0, 0, err
		}
		socks = append(socks, s...)
	}
	for _, s := range socks {
		if keep != nil && keep(s.conn) {
			kept++
			continue
		}
		if err := ctx.Err(); err != nil {
			return dropped, kept, status.FromContextError(err).Err()
		}
		err := destroy(fd, s)
		switch {
		case err == nil:
			dropped++
		case errors.Is(err, unix.ENOENT):
			// closed meanwhile
		case errors.Is(err, unix.EOPNOTSUPP):
			return dropped, kept, status.Error(codes.FailedPrecondition, ErrNoSockDestroy.Error())
		default:
			return dropped, kept, fmt.Errorf("SOCK_DESTROY %s -> %s: %w", s.conn.Local, s.conn.Remote, err)
		}
	}
	return dropped, kept, nil
}

// nlSeq numbers requests; replies are matched to them.
var nlSeq atomic.Uint32

func request(fd int, typ, flags uint16, family uint8, states uint32, id []byte) (uint32, error) {
	seq := nlSeq.Add(1)
	b := make([]byte, unix.SizeofNlMsghdr+sizeofDiagReq)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], unix.NLM_F_REQUEST|flags)
	ne.PutUint32(b[8:], seq)
	r := b[unix.SizeofNlMsghdr:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], states)
	copy(r[8:], id)
	return seq, unix.Sendto(fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// receive reads replies to seq until NLMSG_DONE (dump) or the ack, calling
// fn for each data message.
func receive(fd int, seq uint32, fn func(data []byte)) error {
	buf := make([]byte, 64<<10)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return errors.New("short netlink error")
				}
				if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
					return unix.Errno(-e)
				}
				return nil // ack
			default:
				fn(m.Data)
			}
		}
	}
}

func dumpTCP(fd int, family uint8) ([]diagSock, error) {
	seq, err := request(fd, sockDiagByFam, unix.NLM_F_DUMP, family, droppableStates, nil)
	if err != nil {
		return nil, fmt.Errorf("sock_diag dump: %w", err)
	}
	var out []diagSock
	err = receive(fd, seq, func(d []byte) {
		if len(d) < sizeofDiagMsg {
			return
		}
		s := diagSock{family: d[0]}
		copy(s.id[:], d[4:4+sizeofSockID])
		s.conn = Conn{Local: sockAddr(s.family, s.id[4:20], s.id[0:2]), Remote: sockAddr(s.family, s.id[20:36], s.id[2:4])}
		out = append(out, s)
	})
	if err != nil {
		return nil, fmt.Errorf("sock_diag dump: %w", err)
	}
	return out, nil
}

func destroy(fd int, s diagSock) error {
	seq, err := request(fd, sockDiagDestroy, unix.NLM_F_ACK, s.family, ^uint32(0), s.id[:])
	if err != nil {
		return err
	}
	return receive(fd, seq, func([]byte) {})
}

func sockAddr(family uint8, addr, port []byte) netip.AddrPort {
	var a netip.Addr
	if family == unix.AF_INET {
		a = netip.AddrFrom4([4]byte(addr[:4]))
	} else {
		a = netip.AddrFrom16([16]byte(addr[:16]))
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(port))
}
