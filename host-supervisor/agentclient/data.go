package agentclient

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/agentdata"
	"github.com/sailbox/sailbox/protocol/transport"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Output moves over a data connection when the agent offers them
// (package agentdata): raw frames, sent by the agent with
// sendfile, instead of ttrpc messages. Idle data connections are kept for
// the next calls (up to maxIdleData). An agent that does not echo the greeting gets ttrpc.

// greetingTimeout bounds the wait for the agent's echo of the greeting.
const greetingTimeout = 2 * time.Second

// errNoData means the agent has no data connections: use ttrpc.
var errNoData = errors.New("agent has no data connections")

// dataConn is one raw output connection.
type dataConn struct {
	nc  net.Conn
	br  *bufio.Reader // a small frame and its header in one read
	hdr [agentdata.HeaderLen]byte
	buf []byte
}

// getData returns the idle data connection or dials one.
func (c *Client) getData(ctx context.Context) (*dataConn, error) {
	c.dataMu.Lock()
	if n := len(c.idleData); n > 0 {
		d := c.idleData[n-1]
		c.idleData = c.idleData[:n-1]
		c.dataMu.Unlock()
		return d, nil
	}
	no := c.noData
	c.dataMu.Unlock()
	if no {
		return nil, errNoData
	}
	dctx, cancel := context.WithTimeout(ctx, c.dialTimeout)
	defer cancel()
	nc, err := transport.DialWith(dctx, c.addr, c.opts)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "agent %s: %v", c.addr, err)
	}
	// The greeting: an agent without data connections takes it for a
	// broken ttrpc message and closes, or says nothing.
	nc.SetDeadline(time.Now().Add(greetingTimeout))
	echo := make([]byte, len(agentdata.Magic))
	_, err = io.WriteString(nc, agentdata.Magic)
	if err == nil {
		_, err = io.ReadFull(nc, echo)
	}
	if err != nil || string(echo) != agentdata.Magic {
		nc.Close()
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		c.log.Debug("agent has no data connections, output goes over ttrpc", "agent", c.addr, "err", err)
		c.dataMu.Lock()
		c.noData = true
		c.dataMu.Unlock()
		return nil, errNoData
	}
	nc.SetDeadline(time.Time{})
	return &dataConn{nc: nc, br: bufio.NewReaderSize(nc, 4096)}, nil
}

// maxIdleData bounds the idle data connections kept for concurrent callers.
const maxIdleData = 64

// putData keeps a clean connection (between requests) for the next call.
func (c *Client) putData(d *dataConn) {
	c.dataMu.Lock()
	defer c.dataMu.Unlock()
	if len(c.idleData) < maxIdleData && !c.closed {
		c.idleData = append(c.idleData, d)
		return
	}
	d.nc.Close()
}

// closeData closes the idle data connections.
func (c *Client) closeData() {
	c.dataMu.Lock()
	defer c.dataMu.Unlock()
	c.closed = true
	for _, d := range c.idleData {
		d.nc.Close()
	}
	c.idleData = nil
}

// copyOutputData is copyOutput over data connections, with the same retry
// rules: a broken link is redialed and the request resent from the offsets
// reached. It returns errNoData when the agent has none (before any output).
func (c *Client) copyOutputData(ctx context.Context, req *agentv1.OutputRequest, off *Offsets, stdout, stderr io.Writer) (*agentv1.ExecStatus, error) {
	backoff := 20 * time.Millisecond
	for {
		d, err := c.getData(ctx)
		if err != nil {
			return nil, err
		}
		began := time.Now()
		req.StdoutOffset, req.StderrOffset = off.Stdout, off.Stderr
		req.Release = c.takeReleases()
		final, clean, err := d.stream(ctx, req, off, stdout, stderr)
		if clean {
			c.putData(d)
		} else {
			d.nc.Close()
		}
		if err == nil || !IsConnectionError(err) {
			return final, err
		}
		if !clean && req.Release != nil && off.Stdout == req.StdoutOffset && off.Stderr == req.StderrOffset {
			c.queueRelease(req.Release...) // maybe not delivered: keep them
		}
		if time.Since(began) > time.Second {
			backoff = 20 * time.Millisecond
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("agent %s: %w (last error: %v)", c.addr, status.FromContextError(ctx.Err()).Err(), err)
		}
		c.log.Debug("agent data connection lost, redialing", "agent", c.addr, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// send writes one request. The returned stop must be called when the
// request's frames have been read: until then a cancelled ctx unblocks the
// reads (and the connection is then dropped).
func (d *dataConn) send(ctx context.Context, req *agentv1.DataRequest) (stop func() bool, err error) {
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, err
	}
	msg := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(msg, uint32(len(b)))
	copy(msg[4:], b)
	stop = context.AfterFunc(ctx, func() { d.nc.SetDeadline(time.Unix(1, 0)) })
	if _, err := d.nc.Write(msg); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// stream sends one output request and copies its frames. clean says the
// connection is between requests again (reusable).
func (d *dataConn) stream(ctx context.Context, req *agentv1.OutputRequest, off *Offsets, stdout, stderr io.Writer) (final *agentv1.ExecStatus, clean bool, err error) {
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = status.FromContextError(ctx.Err()).Err()
			clean = false
		}
	}()
	stop, err := d.send(ctx, &agentv1.DataRequest{Request: &agentv1.DataRequest_Output{Output: req}})
	if err != nil {
		return nil, false, err
	}
	defer stop()
	for {
		if _, err := io.ReadFull(d.br, d.hdr[:]); err != nil {
			return nil, false, eof(err)
		}
		kind := d.hdr[0]
		at := binary.BigEndian.Uint64(d.hdr[1:])
		n := int(binary.BigEndian.Uint32(d.hdr[9:]))
		switch kind {
		case agentdata.FrameStdout, agentdata.FrameStderr:
			w, pos := stdout, &off.Stdout
			if kind == agentdata.FrameStderr {
				w, pos = stderr, &off.Stderr
			}
			if at != *pos {
				return nil, false, fmt.Errorf("exec %s: output chunk at offset %d, expected %d", req.Id, at, *pos)
			}
			if err := d.copyTo(w, n, pos); err != nil {
				return nil, false, err
			}
		case agentdata.FrameFinal, agentdata.FrameError, agentdata.FrameEnd:
			p := make([]byte, n)
			if _, err := io.ReadFull(d.br, p); err != nil {
				return nil, false, eof(err)
			}
			switch kind {
			case agentdata.FrameEnd:
				return nil, true, nil
			case agentdata.FrameError:
				return nil, true, errorFrame(p)
			}
			st := &agentv1.ExecStatus{}
			if err := proto.Unmarshal(p, st); err != nil {
				return nil, false, fmt.Errorf("data connection: bad final status: %w", err)
			}
			return st, true, nil
		default:
			return nil, false, fmt.Errorf("data connection: unknown frame kind %d", kind)
		}
	}
}

// readFile sends one file read and copies the file's frames to w. pos is
// the file offset of the next byte to write; info receives the FileInfo
// frame. clean says the connection is reusable.
func (d *dataConn) readFile(ctx context.Context, req *agentv1.ReadFileRequest, w io.Writer, pos *uint64, info func(*agentv1.FileInfo)) (clean bool, err error) {
	defer func() {
		if err != nil && ctx.Err() != nil {
			err = status.FromContextError(ctx.Err()).Err()
			clean = false
		}
	}()
	stop, err := d.send(ctx, &agentv1.DataRequest{Request: &agentv1.DataRequest_ReadFile{ReadFile: req}})
	if err != nil {
		return false, err
	}
	defer stop()
	for {
		if _, err := io.ReadFull(d.br, d.hdr[:]); err != nil {
			return false, eof(err)
		}
		kind := d.hdr[0]
		at := binary.BigEndian.Uint64(d.hdr[1:])
		n := int(binary.BigEndian.Uint32(d.hdr[9:]))
		if kind == agentdata.FrameFile {
			if at != *pos {
				return false, fmt.Errorf("read %s: chunk at offset %d, expected %d", req.Path, at, *pos)
			}
			if err := d.copyTo(w, n, pos); err != nil {
				return false, err
			}
			continue
		}
		if n > agentdata.MaxRequest {
			return false, fmt.Errorf("data connection: %d-byte control frame", n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(d.br, p); err != nil {
			return false, eof(err)
		}
		switch kind {
		case agentdata.FrameFileInfo:
			fi := &agentv1.FileInfo{}
			if err := proto.Unmarshal(p, fi); err != nil {
				return false, fmt.Errorf("data connection: bad file info: %w", err)
			}
			info(fi)
		case agentdata.FrameEnd:
			return true, nil
		case agentdata.FrameError:
			return true, errorFrame(p)
		default:
			return false, fmt.Errorf("data connection: unexpected frame kind %d in a file read", kind)
		}
	}
}

// errorFrame decodes a FrameError payload.
func errorFrame(p []byte) error {
	var s spb.Status
	if err := proto.Unmarshal(p, &s); err != nil {
		return fmt.Errorf("data connection: bad error frame: %w", err)
	}
	return status.FromProto(&s).Err()
}

// copyTo copies n bytes of payload to w, advancing pos as it writes.
func (d *dataConn) copyTo(w io.Writer, n int, pos *uint64) error {
	if d.buf == nil {
		d.buf = make([]byte, 1<<20)
	}
	for n > 0 {
		r, err := d.br.Read(d.buf[:min(n, len(d.buf))])
		if r > 0 {
			if _, werr := w.Write(d.buf[:r]); werr != nil {
				return &LocalWriteError{werr}
			}
			*pos += uint64(r)
			n -= r
		}
		if err != nil && n > 0 {
			return eof(err)
		}
	}
	return nil
}

// eof makes a clean EOF mid-frame an unexpected one (a cut link).
func eof(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
