package transport

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"time"

	"github.com/mdlayher/vsock"
)

// Listen listens on a unix:// or vsock:// address. A stale unix socket file
// left by a previous process is replaced.
func Listen(addr string) (net.Listener, error) {
	a, err := Parse(addr)
	if err != nil {
		return nil, err
	}
	switch a.Scheme {
	case SchemeUnix:
		if fi, err := os.Lstat(a.Path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.Dial("unix", a.Path); err == nil {
				c.Close()
				return nil, fmt.Errorf("listen %s: another process is serving it", addr)
			}
			os.Remove(a.Path)
		}
		return net.Listen("unix", a.Path)
	case SchemeVsock:
		if a.CID != AnyCID {
			return vsock.ListenContextID(a.CID, a.Port, nil)
		}
		return vsock.Listen(a.Port, nil)
	}
	return nil, fmt.Errorf("listen %s: cannot listen on a %s address", addr, a.Scheme)
}

// DialOptions tune Dial. The zero value is usable.
type DialOptions struct {
	// HandshakeTimeout bounds one hybrid-vsock CONNECT exchange (default 2s).
	HandshakeTimeout time.Duration
	// Backoff is the first retry delay (default 20ms), doubled up to MaxBackoff (default 1s), with jitter.
	Backoff    time.Duration
	MaxBackoff time.Duration
}

func (o DialOptions) withDefaults() DialOptions {
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 2 * time.Second
	}
	if o.Backoff <= 0 {
		o.Backoff = 20 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Second
	}
	return o
}

// Dial connects to an agent address with default options. Transient failures
// (nothing listening yet, a guest port not yet bound) are retried with backoff
// until ctx ends; a malformed address or a hybrid reply that is not "OK" fails
// at once.
func Dial(ctx context.Context, addr string) (net.Conn, error) {
	return DialWith(ctx, addr, DialOptions{})
}

// DialWith is Dial with options.
func DialWith(ctx context.Context, addr string, o DialOptions) (net.Conn, error) {
	a, err := Parse(addr)
	if err != nil {
		return nil, err
	}
	if a.Scheme == SchemeVsock && (a.CID == AnyCID || a.CID <= HostCID) {
		return nil, fmt.Errorf("dial %s: CID must be a guest's (3 or more)", addr)
	}
	o = o.withDefaults()
	delay := o.Backoff
	for attempt := 1; ; attempt++ {
		conn, err := dialOnce(ctx, a, o)
		if err == nil {
			return conn, nil
		}
		var perm *permanentError
		if errors.As(err, &perm) {
			return nil, fmt.Errorf("dial %s: %w", addr, perm.err)
		}
		sleep := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial %s: gave up after %d attempts: %w (last error: %v)", addr, attempt, ctx.Err(), err)
		case <-time.After(sleep):
		}
		delay = min(delay*2, o.MaxBackoff)
	}
}

// permanentError marks a dial failure that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }

func dialOnce(ctx context.Context, a Addr, o DialOptions) (net.Conn, error) {
	switch a.Scheme {
	case SchemeUnix:
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.Path)
	case SchemeVsock:
		return vsock.Dial(a.CID, a.Port, nil)
	case SchemeHvsock:
		return dialHybrid(ctx, a, o.HandshakeTimeout)
	}
	return nil, &permanentError{fmt.Errorf("unsupported scheme %q", a.Scheme)}
}

// maxReplyLine bounds the hybrid handshake reply; real replies are ~15 bytes.
const maxReplyLine = 256

// dialHybrid performs the Firecracker hybrid-vsock handshake: connect to the
// VMM's unix socket, send "CONNECT <port>\n", and read one reply line. Both
// Firecracker ("OK <host port>") and rust-vmm ("OK <guest port>") replies are
// accepted; the number is not checked. A connection closed before any reply
// means nothing listens on the guest port yet (retryable); any other reply is
// a permanent error.
func dialHybrid(ctx context.Context, a Addr, timeout time.Duration) (net.Conn, error) {
	var d net.Dialer
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := d.DialContext(hctx, "unix", a.Path)
	if err != nil {
		return nil, err
	}
	deadline, _ := hctx.Deadline()
	conn.SetDeadline(deadline)
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", a.Port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hybrid vsock handshake: write CONNECT: %w", err)
	}
	// Read byte by byte so that no payload after the reply line is consumed.
	line := make([]byte, 0, 32)
	buf := make([]byte, 1)
	for {
		n, err := conn.Read(buf)
		if n == 1 {
			if buf[0] == '\n' {
				break
			}
			line = append(line, buf[0])
			if len(line) > maxReplyLine {
				conn.Close()
				return nil, &permanentError{fmt.Errorf("hybrid vsock handshake: reply longer than %d bytes: %q...", maxReplyLine, line[:32])}
			}
			continue
		}
		if err != nil {
			conn.Close()
			if len(line) == 0 {
				return nil, fmt.Errorf("hybrid vsock handshake: no reply to CONNECT %d (is the guest listening?): %w", a.Port, err)
			}
			return nil, &permanentError{fmt.Errorf("hybrid vsock handshake: incomplete reply %q: %w", line, err)}
		}
	}
	reply := strings.TrimSuffix(string(line), "\r")
	if !strings.HasPrefix(reply, "OK ") {
		conn.Close()
		return nil, &permanentError{fmt.Errorf("hybrid vsock handshake: CONNECT %d refused: reply %q", a.Port, reply)}
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}
