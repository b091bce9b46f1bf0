package vsockbackend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/vhostuser"
)

// Queue indices of the virtio-vsock device handled by the back end (the
// event queue stays in QEMU).
const (
	rxQueue = 0
	txQueue = 1
)

const (
	// bufAlloc is the receive buffer the back end advertises per
	// connection: how much guest→host data it holds while the host side
	// is slow. It bounds the memory a stalled connection can pin.
	bufAlloc = 128 * 1024
	// readChunk is the most host→guest data read per syscall per connection.
	readChunk = 64 * 1024
	// maxQueuedRaw bounds resets (and final shutdowns) of forgotten
	// connections waiting for rx buffers; beyond it they are dropped (the
	// guest times out instead).
	maxQueuedRaw = 4096
	// maxTxBatch bounds the tx chains handled under the lock per kick, so a
	// guest that keeps the ring full cannot hold the device forever.
	maxTxBatch = 1024
	// firstHostPort is where host-side ports of host→guest connections
	// start, as in Firecracker.
	firstHostPort = 1 << 30
)

// Pending control packets of a connection.
const (
	ctlRequest = 1 << iota
	ctlResponse
	ctlShutdown
	ctlCreditUpdate
)

// connectTimeout bounds how long a host→guest connect waits for the
// guest's RESPONSE, and a guest→host dial of the host listener. A variable
// so that tests can shorten it.
var connectTimeout = 5 * time.Second

// maxConns bounds the connections of one guest; a REQUEST or CONNECT
// beyond it is refused. A variable so that tests can lower it.
var maxConns = 4096

type connKey struct{ hostPort, guestPort uint32 }

type connState int

const (
	stConnecting  connState = iota // host→guest: REQUEST queued or sent
	stDialing                      // guest→host: dialing the host listener
	stEstablished                  // data flows
	stClosed
)

// vconn is one vsock stream between the guest and a host unix socket. All
// fields are guarded by device.mu.
type vconn struct {
	key   connKey
	state connState
	uc    *net.UnixConn
	r     io.Reader // uc, or a bufio.Reader holding bytes read with the CONNECT line
	cond  *sync.Cond

	// host → guest
	peerBufAlloc, peerFwdCnt uint32
	txCnt                    uint32 // payload bytes sent to the guest
	rbuf, pending            []byte // pending: read from the host, not yet in the guest
	hostEOF                  bool   // the host side sent EOF
	shutSent                 bool   // SHUTDOWN(SEND) queued to the guest

	// guest → host
	rxCnt, fwdCnt, advFwdCnt uint32 // received, written to the host, last advertised
	wbuf                     []byte // ring of bufAlloc bytes, allocated on first data
	wr, wlen                 int
	guestShut                uint32 // SHUTDOWN flags the guest sent
	hostWriteClosed          bool

	ctl           int
	inCtl, inData bool
}

func (c *vconn) credit() uint32 {
	inflight := c.txCnt - c.peerFwdCnt
	if inflight >= c.peerBufAlloc {
		return 0
	}
	return c.peerBufAlloc - inflight
}

// Stats counts what the device rejected or dropped.
type Stats struct {
	BadChains   atomic.Uint64 // descriptor chains that failed to resolve
	BadPackets  atomic.Uint64 // tx packets with an invalid header
	RSTsSent    atomic.Uint64
	RSTsDropped atomic.Uint64
	Connections atomic.Uint64 // connections established, both directions
}

// device is one virtio-vsock device instance, for one front-end session.
type device struct {
	cid        uint64
	hybridPath string
	log        *slog.Logger
	stats      *Stats
	fail       func(error) // ends the session (a broken ring)

	mu       sync.Mutex
	rxq, txq *vhostuser.Queue
	conns    map[connKey]*vconn
	ctlq     []*vconn
	dataq    []*vconn
	rsts     []Header
	nextPort uint32
	closed   bool
	rxChain  vhostuser.Chain
	txChain  vhostuser.Chain
	hdr      [HeaderSize]byte

	wg sync.WaitGroup

	// warn's rate limit: a hostile guest must not flood the log.
	warnSince            time.Time
	warnCount, warnQuiet int
}

// warnPerSecond bounds the warnings one device logs per second.
const warnPerSecond = 20

// warn logs a warning about the guest, at most warnPerSecond a second.
// Called with d.mu held.
func (d *device) warn(msg string, args ...any) {
	now := time.Now()
	if now.Sub(d.warnSince) >= time.Second {
		if d.warnQuiet > 0 {
			d.log.Warn("vsock: warnings suppressed", "count", d.warnQuiet)
		}
		d.warnSince, d.warnCount, d.warnQuiet = now, 0, 0
	}
	if d.warnCount >= warnPerSecond {
		d.warnQuiet++
		return
	}
	d.warnCount++
	d.log.Warn(msg, args...)
}

func newDevice(cid uint64, hybridPath string, log *slog.Logger, stats *Stats, fail func(error)) *device {
	return &device{cid: cid, hybridPath: hybridPath, log: log, stats: stats, fail: fail,
		conns: map[connKey]*vconn{}, nextPort: firstHostPort}
}

// vhostuser.Device

func (d *device) Features() uint64         { return vhostuser.FeatureVersion1 }
func (d *device) ProtocolFeatures() uint64 { return vhostuser.ProtocolFeatureConfig }
func (d *device) NumQueues() int           { return 2 }

func (d *device) Config(offset, size uint32) ([]byte, error) {
	var cfg [8]byte // struct virtio_vsock_config { le64 guest_cid; }
	binary.LittleEndian.PutUint64(cfg[:], d.cid)
	if uint64(offset)+uint64(size) > uint64(len(cfg)) {
		return nil, fmt.Errorf("vsock config space is %d bytes", len(cfg))
	}
	return cfg[offset : offset+size], nil
}

func (d *device) Start(q *vhostuser.Queue) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch q.Index {
	case rxQueue:
		d.rxq = q
	case txQueue:
		d.txq = q
	}
	d.processTx()
	d.fillRx()
}

func (d *device) Stop(q *vhostuser.Queue) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rxq == q {
		d.rxq = nil
	}
	if d.txq == q {
		d.txq = nil
	}
}

func (d *device) Kick(q *vhostuser.Queue) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q == d.txq {
		d.processTx()
	}
	if q == d.rxq || q == d.txq {
		d.fillRx()
	}
}

// enter registers a goroutine that will use the device; it fails once the
// session is over.
func (d *device) enter() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.wg.Add(1)
	return true
}

// running reports whether both queues run, i.e. the guest driver is up.
func (d *device) running() bool { return d.rxq != nil && d.txq != nil && !d.closed }

// broken handles a corrupt ring: the session ends with the error.
func (d *device) broken(err error) {
	d.log.Error("vsock: guest ring corrupt, ending the session", "err", err)
	d.rxq, d.txq = nil, nil
	go d.fail(err)
}

// processTx consumes the guest's packets. Called with d.mu held.
func (d *device) processTx() {
	q := d.txq
	if q == nil {
		return
	}
	for handled := 0; d.txq == q; handled++ {
		if handled == maxTxBatch {
			// Let the others in; finish in a fresh Kick.
			go d.Kick(q)
			break
		}
		err := q.Pop(&d.txChain)
		if err == vhostuser.ErrEmpty {
			break
		}
		var ce *vhostuser.ChainError
		if errors.As(err, &ce) {
			d.stats.BadChains.Add(1)
			d.warn("vsock tx: bad descriptor chain", "err", err)
			q.Push(ce.Head, 0)
			continue
		}
		if err != nil {
			d.broken(err)
			return
		}
		d.handleTx(&d.txChain)
		q.Push(d.txChain.Head, 0)
	}
	if err := q.Notify(); err != nil {
		d.warn("vsock tx: call eventfd", "err", err)
	}
}

func (d *device) handleTx(c *vhostuser.Chain) {
	if c.RLen < HeaderSize {
		d.stats.BadPackets.Add(1)
		d.warn("vsock tx: packet shorter than its header", "bytes", c.RLen)
		return
	}
	c.ReadAt(d.hdr[:], 0)
	h, _ := ParseHeader(d.hdr[:])
	key := connKey{hostPort: h.DstPort, guestPort: h.SrcPort}
	vc := d.conns[key]
	if err := h.Validate(d.cid, c.RLen-HeaderSize); err != nil {
		d.stats.BadPackets.Add(1)
		d.warn("vsock tx: invalid packet", "hdr", h.String(), "err", err)
		if h.SrcCID != d.cid || h.DstCID != HostCID || h.Op == OpRST {
			return // not addressed as ours: nothing to reset
		}
		if vc != nil {
			d.removeConn(vc, true)
		} else {
			d.queueRST(key)
		}
		return
	}
	if vc == nil {
		switch h.Op {
		case OpRequest:
			if len(d.conns) >= maxConns {
				d.warn("vsock: too many connections, refusing a guest connect", "port", h.DstPort, "max", maxConns)
				d.queueRST(key)
				return
			}
			d.guestConnect(h)
		case OpRST:
		default:
			d.queueRST(key)
		}
		return
	}
	vc.peerBufAlloc, vc.peerFwdCnt = h.BufAlloc, h.FwdCnt
	switch h.Op {
	case OpRequest:
		d.warn("vsock: REQUEST for an existing connection", "hdr", h.String())
		d.removeConn(vc, true)
		return
	case OpResponse:
		if vc.state != stConnecting {
			d.removeConn(vc, true)
			return
		}
		vc.state = stEstablished
		d.stats.Connections.Add(1)
	case OpRW:
		if vc.state != stEstablished || vc.guestShut&ShutdownSend != 0 {
			d.removeConn(vc, true)
			return
		}
		if vc.wbuf == nil {
			vc.wbuf = make([]byte, bufAlloc)
		}
		n := int(h.Len)
		if n > len(vc.wbuf)-vc.wlen {
			d.warn("vsock: guest exceeded its credit", "hdr", h.String(), "buffered", vc.wlen)
			d.removeConn(vc, true)
			return
		}
		w := (vc.wr + vc.wlen) % len(vc.wbuf)
		k := min(n, len(vc.wbuf)-w)
		c.ReadAt(vc.wbuf[w:w+k], HeaderSize)
		if k < n {
			c.ReadAt(vc.wbuf[:n-k], HeaderSize+uint64(k))
		}
		vc.wlen += n
		vc.rxCnt += uint32(n)
	case OpCreditUpdate:
	case OpCreditRequest:
		d.queueCtl(vc, ctlCreditUpdate)
	case OpShutdown:
		vc.guestShut |= h.Flags & (ShutdownRcv | ShutdownSend)
		if vc.guestShut&ShutdownRcv != 0 {
			vc.pending = nil
		}
		d.maybeFinish(vc)
	case OpRST:
		d.removeConn(vc, false)
		return
	}
	d.wantData(vc)
	vc.cond.Broadcast()
}

// guestConnect starts a guest → host connection: dial "<hybrid>_<port>".
func (d *device) guestConnect(h Header) {
	key := connKey{hostPort: h.DstPort, guestPort: h.SrcPort}
	vc := d.newConn(key, stDialing)
	vc.peerBufAlloc, vc.peerFwdCnt = h.BufAlloc, h.FwdCnt
	path := fmt.Sprintf("%s_%d", d.hybridPath, h.DstPort)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		c, err := net.DialTimeout("unix", path, connectTimeout)
		d.mu.Lock()
		if vc.state != stDialing {
			d.mu.Unlock()
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil {
			d.log.Debug("vsock: guest connect refused", "port", h.DstPort, "err", err)
			d.removeConn(vc, true)
			d.fillRx()
			d.mu.Unlock()
			return
		}
		vc.uc = c.(*net.UnixConn)
		vc.r = vc.uc
		vc.state = stEstablished
		d.stats.Connections.Add(1)
		d.queueCtl(vc, ctlResponse)
		d.fillRx()
		d.mu.Unlock()
		d.runIO(vc)
	}()
}

func (d *device) newConn(key connKey, st connState) *vconn {
	vc := &vconn{key: key, state: st, cond: sync.NewCond(&d.mu)}
	d.conns[key] = vc
	return vc
}

// hostConnect runs a host → guest connection for a hybrid client that
// asked for guest port port. It returns when the connection ends.
func (d *device) hostConnect(uc *net.UnixConn, r io.Reader, port uint32) {
	d.mu.Lock()
	if !d.running() || len(d.conns) >= maxConns {
		d.mu.Unlock()
		uc.Close() // no reply: the client retries, as when nothing listens
		return
	}
	var key connKey
	for {
		key = connKey{hostPort: d.nextPort, guestPort: port}
		d.nextPort++
		if d.nextPort < firstHostPort {
			d.nextPort = firstHostPort
		}
		if d.conns[key] == nil {
			break
		}
	}
	vc := d.newConn(key, stConnecting)
	vc.uc, vc.r = uc, r
	d.queueCtl(vc, ctlRequest)
	d.fillRx()
	timer := time.AfterFunc(connectTimeout, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if vc.state == stConnecting {
			d.log.Debug("vsock: guest did not answer a connect", "port", port)
			d.removeConn(vc, true)
			d.fillRx()
		}
	})
	for vc.state == stConnecting {
		vc.cond.Wait()
	}
	timer.Stop()
	ok := vc.state == stEstablished
	d.mu.Unlock()
	if !ok {
		return // refused (RST): closed without a reply
	}
	uc.SetWriteDeadline(time.Now().Add(connectTimeout))
	_, err := fmt.Fprintf(uc, "OK %d\n", key.hostPort)
	uc.SetWriteDeadline(time.Time{})
	if err != nil {
		d.mu.Lock()
		d.removeConn(vc, true)
		d.fillRx()
		d.mu.Unlock()
		return
	}
	d.runIO(vc)
}

// runIO starts the writer goroutine and runs the reader in the caller.
func (d *device) runIO(vc *vconn) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.writeLoop(vc)
	}()
	d.readLoop(vc)
}

// readLoop moves host → guest data: it reads at most the guest's credit,
// so a guest that does not read stalls only its own connection.
func (d *device) readLoop(vc *vconn) {
	vc.rbuf = make([]byte, readChunk)
	for {
		d.mu.Lock()
		for vc.state == stEstablished && !vc.hostEOF && vc.guestShut&ShutdownRcv == 0 && (len(vc.pending) > 0 || vc.credit() == 0) {
			vc.cond.Wait()
		}
		if vc.state != stEstablished || vc.hostEOF || vc.guestShut&ShutdownRcv != 0 {
			d.mu.Unlock()
			return
		}
		n := min(int(vc.credit()), len(vc.rbuf))
		d.mu.Unlock()

		m, err := vc.r.Read(vc.rbuf[:n])

		d.mu.Lock()
		if vc.state != stEstablished {
			d.mu.Unlock()
			return
		}
		if m > 0 && vc.guestShut&ShutdownRcv == 0 {
			vc.pending = vc.rbuf[:m]
			d.wantData(vc)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				vc.hostEOF = true
				if len(vc.pending) == 0 {
					d.hostDone(vc)
				}
			} else {
				d.log.Debug("vsock: host read", "port", vc.key.guestPort, "err", err)
				d.removeConn(vc, true)
			}
		}
		d.fillRx()
		d.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// hostDone queues SHUTDOWN(SEND) once the host's EOF has no data before it.
func (d *device) hostDone(vc *vconn) {
	if !vc.shutSent {
		vc.shutSent = true
		d.queueCtl(vc, ctlShutdown)
	}
	d.maybeFinish(vc)
}

// writeLoop moves guest → host data from the connection's buffer.
func (d *device) writeLoop(vc *vconn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		if vc.state != stEstablished || vc.hostWriteClosed {
			return
		}
		if vc.wlen == 0 {
			vc.cond.Wait()
			continue
		}
		chunk := vc.wbuf[vc.wr : vc.wr+min(vc.wlen, len(vc.wbuf)-vc.wr)]
		d.mu.Unlock()
		n, err := vc.uc.Write(chunk)
		d.mu.Lock()
		if vc.state != stEstablished {
			return
		}
		vc.wr = (vc.wr + n) % len(vc.wbuf)
		vc.wlen -= n
		vc.fwdCnt += uint32(n)
		if err != nil {
			d.log.Debug("vsock: host write", "port", vc.key.guestPort, "err", err)
			d.removeConn(vc, true)
			d.fillRx()
			return
		}
		if vc.fwdCnt-vc.advFwdCnt >= bufAlloc/4 {
			d.queueCtl(vc, ctlCreditUpdate)
		}
		d.maybeFinish(vc)
		d.fillRx()
	}
}

// maybeFinish half-closes or ends a connection whose directions are done.
func (d *device) maybeFinish(vc *vconn) {
	if vc.state != stEstablished {
		return
	}
	if vc.guestShut&ShutdownSend != 0 && vc.wlen == 0 && !vc.hostWriteClosed {
		vc.hostWriteClosed = true
		vc.uc.CloseWrite()
		vc.cond.Broadcast()
	}
	hostToGuestDone := vc.shutSent || vc.guestShut&ShutdownRcv != 0
	if vc.hostWriteClosed && hostToGuestDone {
		d.removeConn(vc, true)
	}
}

// removeConn forgets a connection, closes its host socket (waking its
// goroutines) and optionally resets the guest side.
func (d *device) removeConn(vc *vconn, rst bool) {
	if vc.state == stClosed {
		return
	}
	vc.state = stClosed
	if d.conns[vc.key] == vc {
		delete(d.conns, vc.key)
	}
	vc.pending = nil
	if vc.uc != nil {
		vc.uc.Close()
	}
	vc.cond.Broadcast()
	if rst {
		if vc.ctl&ctlShutdown != 0 {
			// The guest learns of the host's EOF before the reset.
			d.queueRaw(Header{SrcCID: HostCID, DstCID: d.cid, SrcPort: vc.key.hostPort, DstPort: vc.key.guestPort,
				Type: TypeStream, Op: OpShutdown, Flags: ShutdownSend, BufAlloc: bufAlloc, FwdCnt: vc.fwdCnt})
		}
		d.queueRST(vc.key)
	}
}

func (d *device) queueRST(key connKey) {
	d.queueRaw(Header{SrcCID: HostCID, DstCID: d.cid, SrcPort: key.hostPort, DstPort: key.guestPort, Type: TypeStream, Op: OpRST})
}

// queueRaw queues a packet of a connection that is already forgotten.
func (d *device) queueRaw(h Header) {
	if len(d.rsts) >= maxQueuedRaw {
		d.stats.RSTsDropped.Add(1)
		return
	}
	d.rsts = append(d.rsts, h)
}

func (d *device) queueCtl(vc *vconn, bit int) {
	vc.ctl |= bit
	if !vc.inCtl {
		vc.inCtl = true
		d.ctlq = append(d.ctlq, vc)
	}
}

// wantData queues a connection whose pending data the guest has room for.
func (d *device) wantData(vc *vconn) {
	if !vc.inData && len(vc.pending) > 0 && vc.credit() > 0 && vc.state == stEstablished {
		vc.inData = true
		d.dataq = append(d.dataq, vc)
	}
}

// fillRx writes queued packets into the guest's rx buffers: resets first,
// then control packets, then data round-robin over connections. Called with
// d.mu held.
func (d *device) fillRx() {
	q := d.rxq
	if q == nil {
		return
	}
	for {
		var h Header
		var vc *vconn
		var payload []byte
		isData := false
		switch {
		case len(d.rsts) > 0:
			h = d.rsts[0]
		case len(d.ctlq) > 0:
			vc = d.ctlq[0]
			if vc.state == stClosed || vc.ctl == 0 {
				vc.inCtl, vc.ctl = false, 0
				d.ctlq = d.ctlq[1:]
				continue
			}
			switch {
			case vc.ctl&ctlRequest != 0:
				h.Op = OpRequest
			case vc.ctl&ctlResponse != 0:
				h.Op = OpResponse
			case vc.ctl&ctlShutdown != 0:
				h.Op, h.Flags = OpShutdown, ShutdownSend
			default:
				h.Op = OpCreditUpdate
			}
		case len(d.dataq) > 0:
			vc = d.dataq[0]
			if vc.state != stEstablished || len(vc.pending) == 0 || vc.credit() == 0 {
				vc.inData = false
				d.dataq = d.dataq[1:]
				continue
			}
			h.Op, isData = OpRW, true
		default:
			d.notifyRx(q)
			return
		}

		err := q.Pop(&d.rxChain)
		if err == vhostuser.ErrEmpty {
			break
		}
		var ce *vhostuser.ChainError
		if errors.As(err, &ce) {
			d.stats.BadChains.Add(1)
			d.warn("vsock rx: bad descriptor chain", "err", err)
			q.Push(ce.Head, 0)
			continue
		}
		if err != nil {
			d.broken(err)
			return
		}
		c := &d.rxChain
		if c.WLen < HeaderSize {
			d.stats.BadChains.Add(1)
			d.warn("vsock rx: buffer shorter than a header", "bytes", c.WLen)
			q.Push(c.Head, 0)
			continue
		}

		if vc == nil {
			d.rsts = d.rsts[1:]
			if h.Op == OpRST {
				d.stats.RSTsSent.Add(1)
			}
		} else {
			h.SrcCID, h.DstCID = HostCID, d.cid
			h.SrcPort, h.DstPort = vc.key.hostPort, vc.key.guestPort
			h.Type = TypeStream
			h.BufAlloc, h.FwdCnt = bufAlloc, vc.fwdCnt
			vc.advFwdCnt = vc.fwdCnt
			vc.ctl &^= ctlCreditUpdate // carried by every packet
			if isData {
				n := min(len(vc.pending), int(vc.credit()), int(min(c.WLen-HeaderSize, MaxPacketPayload)))
				if n == 0 {
					h.Op = OpCreditUpdate
				} else {
					payload = vc.pending[:n]
					vc.pending = vc.pending[n:]
					vc.txCnt += uint32(n)
					h.Len = uint32(n)
				}
				if len(vc.pending) == 0 || vc.credit() == 0 {
					vc.inData = false
					d.dataq = d.dataq[1:]
					if len(vc.pending) == 0 {
						vc.cond.Broadcast()
						if vc.hostEOF {
							d.hostDone(vc)
						}
					}
				} else if len(d.dataq) > 1 {
					d.dataq = append(d.dataq[1:], vc)
				}
			} else {
				switch h.Op {
				case OpRequest:
					vc.ctl &^= ctlRequest
				case OpResponse:
					vc.ctl &^= ctlResponse
				case OpShutdown:
					vc.ctl &^= ctlShutdown
				}
				if vc.ctl == 0 {
					vc.inCtl = false
					d.ctlq = d.ctlq[1:]
				}
			}
		}
		h.Put(d.hdr[:])
		c.WriteAt(d.hdr[:], 0)
		if len(payload) > 0 {
			c.WriteAt(payload, HeaderSize)
		}
		q.Push(c.Head, HeaderSize+uint32(len(payload)))
	}
	d.notifyRx(q)
}

func (d *device) notifyRx(q *vhostuser.Queue) {
	if err := q.Notify(); err != nil {
		d.warn("vsock rx: call eventfd", "err", err)
	}
}

// shutdown ends every connection (the front end went away).
func (d *device) shutdown() {
	d.mu.Lock()
	d.closed = true
	d.rxq, d.txq = nil, nil
	for _, vc := range d.conns {
		d.removeConn(vc, false)
	}
	d.ctlq, d.dataq, d.rsts = nil, nil, nil
	d.mu.Unlock()
	d.wg.Wait()
}
