package vsockbackend

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/vhostuser"
)

// Config configures a Backend.
type Config struct {
	GuestCID        uint64 // returned to the guest via VHOST_USER_GET_CONFIG
	VhostUserSocket string // the backend listens here; QEMU connects with -chardev socket,path=...
	HybridSocket    string // host-side unix socket speaking the Firecracker CONNECT protocol
	Logger          *slog.Logger
}

// Backend is a vhost-user-vsock device back end with a hybrid-vsock front
// end on the host.
type Backend struct {
	cfg        Config
	log        *slog.Logger
	vln        *net.UnixListener
	hln        *net.UnixListener
	stats      Stats
	mu         sync.Mutex
	closed     bool
	dev        *device // the current session's device, nil between sessions
	endSession context.CancelCauseFunc
	hs         sync.Map // hybrid conns still sending their CONNECT line
	wg         sync.WaitGroup
}

// numConns is how many connections the current session tracks.
func (b *Backend) numConns() int {
	b.mu.Lock()
	d := b.dev
	b.mu.Unlock()
	if d == nil {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}

// handshakeTimeout bounds how long a hybrid client may take to send its
// CONNECT line.
const handshakeTimeout = 5 * time.Second

// maxConnectLine bounds the CONNECT line ("CONNECT 4294967295\n" is 19 bytes).
const maxConnectLine = 64

// New creates both listening sockets, replacing stale socket files.
func New(cfg Config) (*Backend, error) {
	if cfg.GuestCID <= HostCID || cfg.GuestCID >= 0xffffffff {
		return nil, fmt.Errorf("vsock backend: guest CID %d must be in 3..0xfffffffe", cfg.GuestCID)
	}
	if cfg.VhostUserSocket == "" || cfg.HybridSocket == "" {
		return nil, errors.New("vsock backend: VhostUserSocket and HybridSocket are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("cid", cfg.GuestCID)
	vln, err := listenUnix(cfg.VhostUserSocket)
	if err != nil {
		return nil, err
	}
	hln, err := listenUnix(cfg.HybridSocket)
	if err != nil {
		vln.Close()
		return nil, err
	}
	b := &Backend{cfg: cfg, log: log, vln: vln, hln: hln}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.acceptHybrid()
	}()
	return b, nil
}

func (b *Backend) currentDevice() *device {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dev
}

func listenUnix(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another process is serving it", path)
		}
		os.Remove(path)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vsock backend: %w", err)
	}
	return ln, nil
}

// Stats returns the counters of rejected and dropped input.
func (b *Backend) Stats() *Stats { return &b.stats }

// Serve serves one QEMU front end until ctx ends (ctx.Err()), QEMU
// disconnects (nil), Close is called (net.ErrClosed) or the guest corrupts
// a ring (an error). Every vsock connection ends with it. Serve may be
// called again for the next front end, but not concurrently.
func (b *Backend) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { b.vln.SetDeadline(time.Unix(1, 0)) })
	conn, err := b.vln.AcceptUnix()
	stop()
	b.vln.SetDeadline(time.Time{})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("vsock backend: accept on %s: %w", b.cfg.VhostUserSocket, err)
	}
	b.log.Info("vhost-user front end connected", "socket", b.cfg.VhostUserSocket)

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	dev := newDevice(b.cfg.GuestCID, b.cfg.HybridSocket, b.log, &b.stats, cancel)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		conn.Close()
		return fmt.Errorf("vsock backend: %w", net.ErrClosed)
	}
	b.dev, b.endSession = dev, cancel
	b.mu.Unlock()

	err = vhostuser.Serve(sctx, conn, dev, b.log)
	if cause := context.Cause(sctx); cause != nil && !errors.Is(cause, context.Canceled) {
		err = fmt.Errorf("vsock backend: %w", cause)
	}
	cancel(nil)
	b.mu.Lock()
	b.dev, b.endSession = nil, nil
	b.mu.Unlock()
	dev.shutdown()
	b.log.Info("vhost-user front end gone", "err", err)
	return err
}

// acceptHybrid accepts host clients until Close. A client that arrives
// while no guest driver is up is closed without a reply, which the hybrid
// dialer takes as "not listening yet" and retries.
func (b *Backend) acceptHybrid() {
	for {
		c, err := b.hln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			b.log.Warn("hybrid vsock accept", "socket", b.cfg.HybridSocket, "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		b.hs.Store(c, nil)
		b.wg.Add(1)
		go func() {
			port, r, err := readConnect(c)
			b.hs.Delete(c)
			var dev *device
			if err != nil {
				b.log.Debug("hybrid vsock handshake", "err", err)
			} else if dev = b.currentDevice(); dev != nil && !dev.enter() {
				dev = nil
			}
			// From here the session, not the Backend, owns the goroutine.
			b.wg.Done()
			if dev == nil {
				c.Close()
				return
			}
			defer dev.wg.Done()
			dev.hostConnect(c, r, port)
		}()
	}
}

// readConnect reads "CONNECT <port>\n". The returned reader holds any bytes
// the client sent after the line.
func readConnect(c *net.UnixConn) (uint32, *bufio.Reader, error) {
	c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	defer c.SetReadDeadline(time.Time{})
	br := bufio.NewReaderSize(c, maxConnectLine)
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, nil, fmt.Errorf("hybrid vsock: reading CONNECT line: %w", err)
	}
	port, err := ParseConnect(string(line))
	return port, br, err
}

// ParseConnect parses the hybrid-vsock request line "CONNECT <port>\n".
func ParseConnect(line string) (uint32, error) {
	s, ok := strings.CutSuffix(line, "\n")
	s = strings.TrimSuffix(s, "\r")
	rest, ok2 := strings.CutPrefix(s, "CONNECT ")
	if !ok || !ok2 {
		return 0, fmt.Errorf("hybrid vsock: bad request line %q", line)
	}
	p, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("hybrid vsock: bad port in %q", line)
	}
	return uint32(p), nil
}

// Close closes both listening sockets, removes their files and ends the
// session being served, if any (Serve then returns an error wrapping
// net.ErrClosed).
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.endSession != nil {
		b.endSession(net.ErrClosed)
	}
	err1 := b.vln.Close()
	err2 := b.hln.Close()
	b.hs.Range(func(k, _ any) bool { k.(*net.UnixConn).Close(); return true })
	b.mu.Unlock()
	b.wg.Wait()
	b.mu.Lock()
	os.Remove(b.cfg.VhostUserSocket)
	os.Remove(b.cfg.HybridSocket)
	return errors.Join(err1, err2)
}
