package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// FileChunkSize is the data per Files message (ttrpc caps a message at 4 MiB).
	FileChunkSize = 1 << 20
	// writeWindow is how many written chunks may be unacknowledged. ttrpc
	// has no flow control: the window is what bounds the agent's memory
	// (and keeps its 64-message receive buffer from ever filling).
	writeWindow = 4
)

// WriteOptions are the optional parts of a file write.
type WriteOptions struct {
	Mode      *uint32 // nil = 0644; setuid/setgid/sticky honoured
	UID, GID  *uint32 // nil = the agent's
	NoParents bool
}

// WriteFile streams r into path in the guest, atomically: the file is
// replaced only once all of r has arrived and been fsynced. An error of r, a
// cancelled ctx or a lost link leaves the old file intact. It is never
// retried (r cannot be rewound): retry with the data again.
func (c *Client) WriteFile(ctx context.Context, path string, r io.Reader, o WriteOptions) (*agentv1.FileInfo, error) {
	cn, err := c.get(ctx)
	if err != nil {
		return nil, err
	}
	info, err := writeFile(ctx, agentv1.NewFilesClient(cn.tc), path, r, o)
	if IsConnectionError(err) {
		c.drop(cn)
		return nil, status.Errorf(codes.Unavailable, "write %s: connection to agent %s lost before the write was confirmed (%v)", path, c.addr, err)
	}
	return info, err
}

func writeFile(ctx context.Context, fc agentv1.FilesClient, path string, r io.Reader, o WriteOptions) (*agentv1.FileInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := fc.Write(ctx)
	if err != nil {
		return nil, err
	}
	hdr := &agentv1.WriteFileHeader{Path: path, Mode: o.Mode, Uid: o.UID, Gid: o.GID, NoParents: o.NoParents}
	if err := st.Send(&agentv1.WriteFileRequest{Header: hdr}); err != nil {
		return nil, err
	}
	// The receiver frees a window slot per acknowledgement and ends with
	// the committed info or the agent's error.
	credits := make(chan struct{}, writeWindow)
	done := make(chan writeFinal, 1)
	go func() {
		for {
			resp, err := st.Recv()
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // the stream must end with the committed info
			}
			if err != nil {
				done <- writeFinal{err: err}
				return
			}
			if resp.Committed != nil {
				done <- writeFinal{info: resp.Committed}
				return
			}
			select {
			case <-credits:
			default:
				done <- writeFinal{err: status.Errorf(codes.Internal, "write %s: acknowledgement without a chunk in flight", path)}
				return
			}
		}
	}()
	buf := make([]byte, FileChunkSize)
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			select {
			case credits <- struct{}{}:
			case f := <-done:
				return nil, f.err
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			// Send marshals and writes before returning: buf is free again.
			if err := st.Send(&agentv1.WriteFileRequest{Data: buf[:n]}); err != nil {
				return nil, sendErr(err, done)
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			// Ending the stream without a commit makes the agent drop the temp file.
			st.CloseSend()
			return nil, status.Errorf(codes.Aborted, "write %s: reading the data: %v; the file was not replaced", path, rerr)
		}
	}
	if err := st.Send(&agentv1.WriteFileRequest{Commit: true}); err != nil {
		return nil, sendErr(err, done)
	}
	st.CloseSend()
	select {
	case f := <-done:
		return f.info, f.err
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

type writeFinal struct {
	info *agentv1.FileInfo
	err  error
}

// sendErr prefers the agent's own error (which made it end the stream)
// over the send failure it caused.
func sendErr(err error, done <-chan writeFinal) error {
	select {
	case f := <-done:
		if f.err != nil {
			return f.err
		}
	default:
	}
	return err
}

// ReadOptions select part of a file and observe its info.
type ReadOptions struct {
	Offset, Limit uint64 // Limit 0 = to the end
	// OnInfo, when set, is called once with the file's info before any data.
	OnInfo func(*agentv1.FileInfo)
}

// ReadFile streams a regular file from the guest into w and returns its
// info and the number of bytes written. A dropped link is redialed and the
// read resumed at the next byte, provided the file is still the same
// (device, inode, size, mtime); otherwise it fails with Aborted. An error of
// w is returned as is and never retried.
func (c *Client) ReadFile(ctx context.Context, path string, w io.Writer, o ReadOptions) (*agentv1.FileInfo, uint64, error) {
	var (
		info *agentv1.FileInfo
		n    uint64
	)
	setInfo := func(fi *agentv1.FileInfo) {
		if info == nil {
			info = fi
			if o.OnInfo != nil {
				o.OnInfo(info)
			}
		}
	}
	// First over a data connection (sendfile in the agent); what a broken
	// link leaves unread is read over ttrpc below, checked unchanged.
	if d, err := c.getData(ctx); err == nil {
		req := &agentv1.ReadFileRequest{Path: path, Offset: o.Offset, Limit: o.Limit}
		pos := o.Offset
		clean, err := d.readFile(ctx, req, w, &pos, setInfo)
		n = pos - o.Offset
		if clean {
			c.putData(d)
		} else {
			d.nc.Close()
		}
		var lw *LocalWriteError
		switch {
		case errors.As(err, &lw):
			return info, n, lw.Err
		case err == nil || !IsConnectionError(err):
			return info, n, err
		}
		if info == nil {
			n = 0 // nothing trustworthy arrived: start over
		}
	} else if !errors.Is(err, errNoData) {
		return nil, 0, err
	}
	err := c.call(ctx, func(cn *conn) error {
		req := &agentv1.ReadFileRequest{Path: path, Offset: o.Offset + n, IfUnchanged: info}
		if o.Limit > 0 {
			if n >= o.Limit {
				return nil
			}
			req.Limit = o.Limit - n
		}
		st, err := agentv1.NewFilesClient(cn.tc).Read(ctx, req)
		if err != nil {
			return err
		}
		for {
			chunk, err := st.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if chunk.Info != nil {
				setInfo(chunk.Info)
			}
			if chunk.Offset != o.Offset+n {
				return fmt.Errorf("read %s: chunk at offset %d, expected %d", path, chunk.Offset, o.Offset+n)
			}
			if len(chunk.Data) == 0 {
				continue
			}
			if _, err := w.Write(chunk.Data); err != nil {
				return &LocalWriteError{err}
			}
			n += uint64(len(chunk.Data))
		}
	})
	var lw *LocalWriteError
	if errors.As(err, &lw) {
		err = lw.Err
	}
	return info, n, err
}

// StatFile describes a path in the guest (a final symlink is not followed).
func (c *Client) StatFile(ctx context.Context, path string) (info *agentv1.FileInfo, err error) {
	err = c.call(ctx, func(cn *conn) error {
		info, err = agentv1.NewFilesClient(cn.tc).Stat(ctx, &agentv1.StatFileRequest{Path: path})
		return err
	})
	return info, err
}
