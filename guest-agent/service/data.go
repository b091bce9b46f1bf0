package service

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/guest-agent/spool"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/agentdata"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Data connections (package agentdata) carry exec output and file reads
// raw, beside ttrpc.

// Mux returns a listener that hands every connection to ttrpc unchanged,
// except those that start with agentdata.Magic, which it serves itself with
// the exec and files services.
func Mux(l net.Listener, e *Exec, f *Files, log *slog.Logger) net.Listener {
	if log == nil {
		log = slog.Default()
	}
	m := &mux{Listener: l, s: e, f: f, log: log, conns: make(chan net.Conn), done: make(chan struct{})}
	go m.loop()
	return m
}

type mux struct {
	net.Listener
	s     *Exec
	f     *Files
	log   *slog.Logger
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	err   error // set before done is closed
}

func (m *mux) loop() {
	backoff := 5 * time.Millisecond
	for {
		c, err := m.Listener.Accept()
		if err != nil {
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				time.Sleep(backoff)
				backoff = min(2*backoff, time.Second)
				continue
			}
			m.err = err
			m.once.Do(func() { close(m.done) })
			return
		}
		backoff = 5 * time.Millisecond
		go m.classify(c)
	}
}

// classify reads the first bytes: every ttrpc message starts with a 10-byte
// header, so reading len(agentdata.Magic) of them never waits for more than the
// client's first request.
func (m *mux) classify(c net.Conn) {
	buf := make([]byte, len(agentdata.Magic))
	n, err := io.ReadFull(c, buf)
	if err != nil {
		c.Close()
		return
	}
	if string(buf) == agentdata.Magic {
		serveData(c, m.s, m.f, m.log)
		return
	}
	select {
	case m.conns <- &prefixConn{Conn: c, prefix: buf[:n]}:
	case <-m.done:
		c.Close()
	}
}

func (m *mux) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		if m.err != nil {
			return nil, m.err
		}
		return nil, net.ErrClosed
	}
}

func (m *mux) Close() error {
	m.once.Do(func() { close(m.done) })
	return m.Listener.Close()
}

// prefixConn replays the bytes the mux read before handing the connection on.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// serveData serves one data connection until the client closes it.
func serveData(c net.Conn, s *Exec, f *Files, log *slog.Logger) {
	defer c.Close()
	if _, err := io.WriteString(c, agentdata.Magic); err != nil {
		return
	}
	// A reader goroutine notices the client going away while a follow
	// request waits for output.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reqs := make(chan *agentv1.DataRequest)
	go func() {
		defer cancel()
		defer close(reqs)
		var hdr [4]byte
		br := bufio.NewReaderSize(c, 4096) // a request in one read
		for {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return
			}
			n := binary.BigEndian.Uint32(hdr[:])
			if n > agentdata.MaxRequest {
				log.Warn("data connection: oversized request", "bytes", n)
				return
			}
			b := make([]byte, n)
			if _, err := io.ReadFull(br, b); err != nil {
				return
			}
			req := &agentv1.DataRequest{}
			if err := proto.Unmarshal(b, req); err != nil {
				log.Warn("data connection: bad request", "err", err)
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	sink := &dataSink{c: c}
	for req := range reqs {
		var err error
		end := true // a request that ends without its own last frame gets FrameEnd
		switch r := req.Request.(type) {
		case *agentv1.DataRequest_Output:
			err = s.output(ctx, r.Output, sink)
			end = !r.Output.Follow
		case *agentv1.DataRequest_ReadFile:
			if f == nil {
				err = status.Error(codes.Unimplemented, "file reads are not served on data connections")
				break
			}
			err = f.readData(ctx, r.ReadFile, sink)
		default:
			err = status.Error(codes.InvalidArgument, "empty data connection request")
		}
		switch {
		case errors.Is(err, errSinkBroken):
			return
		case err != nil:
			b, _ := proto.Marshal(status.Convert(err).Proto())
			if sink.frame(agentdata.FrameError, 0, b) != nil {
				return
			}
		case end:
			if sink.frame(agentdata.FrameEnd, 0, nil) != nil {
				return
			}
		}
	}
}

// dataSink writes frames to a data connection; output goes by sendfile
// from the spool file when both ends allow it.
type dataSink struct {
	c   net.Conn
	hdr [agentdata.HeaderLen]byte
	buf []byte // fallback copy buffer
}

func (d *dataSink) frame(kind byte, off uint64, payload []byte) error {
	// One write: a frame that arrives whole wakes the client once.
	b := make([]byte, agentdata.HeaderLen+len(payload))
	b[0] = kind
	binary.BigEndian.PutUint64(b[1:], off)
	binary.BigEndian.PutUint32(b[9:], uint32(len(payload)))
	copy(b[agentdata.HeaderLen:], payload)
	if _, err := d.c.Write(b); err != nil {
		return &sinkError{err}
	}
	return nil
}

func (d *dataSink) final(st *agentv1.ExecStatus) error {
	b, err := proto.Marshal(st)
	if err != nil {
		return err
	}
	return d.frame(agentdata.FrameFinal, 0, b)
}

func (d *dataSink) data(stream agentv1.Stream, sp *spool.Spool, off, n uint64) (uint64, error) {
	f, avail, err := sp.Section(off, n)
	if errors.Is(err, io.EOF) || avail == 0 {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	kind := agentdata.FrameStdout
	if stream == agentv1.Stream_STREAM_STDERR {
		kind = agentdata.FrameStderr
	}
	if err := d.fileFrame(kind, f, off, avail); err != nil {
		return 0, err
	}
	return avail, nil
}

// fileFrame sends n bytes of f at off as one frame of kind.
func (d *dataSink) fileFrame(kind byte, f *os.File, off, n uint64) error {
	d.hdr[0] = kind
	binary.BigEndian.PutUint64(d.hdr[1:], off)
	binary.BigEndian.PutUint32(d.hdr[9:], uint32(n))
	if _, err := d.c.Write(d.hdr[:]); err != nil {
		return &sinkError{err}
	}
	// The header promised n bytes: from here on a failure breaks the
	// connection either way.
	if err := d.sendfile(f, int64(off), int64(n)); err != nil {
		return &sinkError{err}
	}
	return nil
}

// sendfile copies n bytes of f at off to the connection, in the kernel when
// the connection is a socket, by read and write otherwise.
func (d *dataSink) sendfile(f interface {
	SyscallConn() (syscall.RawConn, error)
	ReadAt([]byte, int64) (int, error)
}, off, n int64) error {
	sc, ok := d.c.(syscall.Conn)
	if ok {
		out, err1 := sc.SyscallConn()
		in, err2 := f.SyscallConn()
		if err1 == nil && err2 == nil {
			var infd int
			in.Control(func(fd uintptr) { infd = int(fd) })
			for n > 0 {
				var serr error
				err := out.Write(func(fd uintptr) bool {
					var w int
					w, serr = unix.Sendfile(int(fd), infd, &off, int(min(n, 1<<30)))
					if w == 0 && serr == nil {
						serr = io.ErrUnexpectedEOF // the spool file is shorter than it said
					}
					n -= int64(max(w, 0))
					return serr != unix.EAGAIN
				})
				if err == nil {
					err = serr
				}
				if err != nil {
					return fmt.Errorf("sendfile: %w", err)
				}
			}
			return nil
		}
	}
	if d.buf == nil {
		d.buf = make([]byte, OutputChunkSize)
	}
	for n > 0 {
		r, err := f.ReadAt(d.buf[:min(n, int64(len(d.buf)))], off)
		if r > 0 {
			if _, werr := d.c.Write(d.buf[:r]); werr != nil {
				return werr
			}
			off += int64(r)
			n -= int64(r)
		}
		if err != nil && n > 0 {
			return err
		}
	}
	return nil
}
