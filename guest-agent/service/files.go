package service

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/sailbox/sailbox/guest-agent/files"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/agentdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// FileChunkSize is the largest data chunk in one Files message.
const FileChunkSize = 1 << 20

// Files serves agentv1.Files over package files.
type Files struct {
	// Writable, when set, is asked before a write starts, before each chunk
	// and before the commit; the agent passes the freezer's CheckWritable, so a write to a
	// frozen filesystem fails with FailedPrecondition instead of blocking.
	Writable func(path string) error
}

var _ agentv1.FilesService = (*Files)(nil)

func (s *Files) Write(ctx context.Context, srv agentv1.Files_WriteServer) error {
	first, err := srv.Recv()
	if errors.Is(err, io.EOF) {
		return status.Error(codes.InvalidArgument, "write: the stream ended before its header")
	}
	if err != nil {
		return recvErr(ctx, err)
	}
	h := first.Header
	if h == nil {
		return status.Error(codes.InvalidArgument, "write: the first message must carry the header")
	}
	spec := files.WriteSpec{Path: h.Path, Mode: h.Mode, UID: -1, GID: -1, NoParents: h.NoParents}
	if h.Uid != nil {
		spec.UID = int(*h.Uid)
	}
	if h.Gid != nil {
		spec.GID = int(*h.Gid)
	}
	path, err := files.CheckPath(h.Path)
	if err != nil {
		return err
	}
	if err := s.writable(path); err != nil {
		return err
	}
	w, err := files.Create(spec)
	if err != nil {
		return err
	}
	// Every way out but a commit removes the temp file: the old file stays.
	defer w.Abort()
	m := first
	for {
		if m != first && m.Header != nil {
			return status.Errorf(codes.InvalidArgument, "write %s: a second header", path)
		}
		if len(m.Data) > FileChunkSize {
			return status.Errorf(codes.InvalidArgument, "write %s: chunk of %d bytes is over %d", path, len(m.Data), FileChunkSize)
		}
		if len(m.Data) > 0 {
			// A freeze that began mid-transfer would block this write until the thaw.
			if err := s.writable(w.Path()); err != nil {
				return err
			}
			if _, err := w.Write(m.Data); err != nil {
				return err
			}
			if err := srv.Send(&agentv1.WriteFileResponse{Written: w.Written()}); err != nil {
				return err
			}
		}
		if m.Commit {
			if err := s.writable(w.Path()); err != nil {
				return err
			}
			info, err := w.Commit()
			if err != nil {
				return err
			}
			return srv.Send(&agentv1.WriteFileResponse{Written: w.Written(), Committed: FileInfoProto(info)})
		}
		if m, err = srv.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return status.Errorf(codes.Aborted, "write %s: the stream ended without a commit after %d bytes; the old file is unchanged", path, w.Written())
			}
			return recvErr(ctx, err)
		}
	}
}

func (s *Files) writable(path string) error {
	if s.Writable == nil {
		return nil
	}
	return s.Writable(path)
}

// recvErr maps a failed receive: the client went away or the call ended.
func recvErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Errorf(codes.Unavailable, "receive: %v", err)
}

func (s *Files) Read(ctx context.Context, req *agentv1.ReadFileRequest, srv agentv1.Files_ReadServer) error {
	r, end, err := openRange(req)
	if err != nil {
		return err
	}
	defer r.Close()
	first := &agentv1.ReadFileChunk{Info: FileInfoProto(r.Info), Offset: req.Offset}
	buf := make([]byte, FileChunkSize)
	off := req.Offset
	for off < end {
		n, err := r.ReadAt(buf[:min(uint64(len(buf)), end-off)], int64(off))
		if n > 0 {
			c := &agentv1.ReadFileChunk{Offset: off, Data: buf[:n]}
			if first != nil {
				first.Data, c = buf[:n], first
				first = nil
			}
			if err := srv.Send(c); err != nil {
				return err
			}
			off += uint64(n)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	if first != nil { // empty file or offset at/after the end: still say what it is
		return srv.Send(first)
	}
	return nil
}

// readData is Read on a data connection: the file's bytes go by sendfile,
// in frames of at most FileChunkSize (the file may shrink while it is read).
func (s *Files) readData(ctx context.Context, req *agentv1.ReadFileRequest, sink *dataSink) error {
	r, end, err := openRange(req)
	if err != nil {
		return err
	}
	defer r.Close()
	b, err := proto.Marshal(FileInfoProto(r.Info))
	if err != nil {
		return err
	}
	if err := sink.frame(agentdata.FrameFileInfo, req.Offset, b); err != nil {
		return err
	}
	end = min(end, r.Info.Size)
	for off := req.Offset; off < end; {
		n := min(end-off, FileChunkSize)
		if err := sink.fileFrame(agentdata.FrameFile, r.File(), off, n); err != nil {
			return err
		}
		off += n
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
	}
	return nil
}

// openRange opens the file of a read request and returns the end offset of
// the requested range (unbounded: ^0).
func openRange(req *agentv1.ReadFileRequest) (*files.Reader, uint64, error) {
	r, err := files.Open(req.Path)
	if err != nil {
		return nil, 0, err
	}
	if want := req.IfUnchanged; want != nil && !r.Info.Same(FileInfoFromProto(want)) {
		r.Close()
		return nil, 0, status.Errorf(codes.Aborted, "read %s: the file changed since the read began", r.Info.Path)
	}
	end := ^uint64(0)
	if req.Limit > 0 && req.Offset+req.Limit > req.Offset {
		end = req.Offset + req.Limit
	}
	return r, end, nil
}

func (s *Files) Stat(ctx context.Context, req *agentv1.StatFileRequest) (*agentv1.FileInfo, error) {
	info, err := files.Stat(req.Path)
	if err != nil {
		return nil, err
	}
	return FileInfoProto(info), nil
}

// FileInfoProto converts a files.Info to the wire.
func FileInfoProto(i files.Info) *agentv1.FileInfo {
	return &agentv1.FileInfo{
		Path: i.Path, Type: agentv1.FileType(i.Type), Size: i.Size, Mode: i.Mode, Uid: i.UID, Gid: i.GID,
		MtimeUnixNano: i.MTime.UnixNano(), SymlinkTarget: i.SymlinkTarget, Dev: i.Dev, Ino: i.Ino,
	}
}

// FileInfoFromProto converts the wire form back.
func FileInfoFromProto(p *agentv1.FileInfo) files.Info {
	return files.Info{
		Path: p.Path, Type: files.Type(p.Type), Size: p.Size, Mode: p.Mode, UID: p.Uid, GID: p.Gid,
		MTime: unixNanoTime(p.MtimeUnixNano), SymlinkTarget: p.SymlinkTarget, Dev: p.Dev, Ino: p.Ino,
	}
}

func unixNanoTime(n int64) time.Time { return time.Unix(0, n) }
