package service_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/guest-agent/service"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// serveFiles serves svc on a real unix socket in-process and returns a client.
func serveFiles(t *testing.T, svc *service.Files) agentv1.FilesClient {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	agentv1.RegisterFilesService(srv, svc)
	sock := filepath.Join(t.TempDir(), "files.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(nc)
	t.Cleanup(func() { tc.Close() })
	return agentv1.NewFilesClient(tc)
}

// The agent acknowledges each chunk after writing it, and asks Writable
// before starting, before each chunk and before committing: a freeze that begins
// mid-transfer refuses the commit and leaves the old file.
func TestWriteAcksEveryChunkAndChecksWritableAtCommit(t *testing.T) {
	var frozen atomic.Bool
	var checks atomic.Int32
	fc := serveFiles(t, &service.Files{Writable: func(p string) error {
		checks.Add(1)
		if frozen.Load() {
			return status.Errorf(codes.FailedPrecondition, "%s: filesystem is frozen", p)
		}
		return nil
	}})
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("old"), 0o644)
	ctx := context.Background()

	st, err := fc.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mode := uint32(0o600)
	st.Send(&agentv1.WriteFileRequest{Header: &agentv1.WriteFileHeader{Path: f, Mode: &mode}})
	for i := 1; i <= 3; i++ {
		st.Send(&agentv1.WriteFileRequest{Data: bytes.Repeat([]byte{'a'}, 1000)})
		ack, err := st.Recv()
		if err != nil || ack.Written != uint64(1000*i) || ack.Committed != nil {
			t.Fatalf("ack %d: %+v %v", i, ack, err)
		}
	}
	frozen.Store(true)
	st.Send(&agentv1.WriteFileRequest{Commit: true})
	st.CloseSend()
	_, err = st.Recv()
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "frozen") || checks.Load() != 5 {
		t.Fatalf("commit while frozen: %v (%d checks)", err, checks.Load())
	}
	if b, _ := os.ReadFile(f); string(b) != "old" {
		t.Fatalf("old file: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("temp file left: %v", ents)
	}

	// Thawed: header, data and commit in one message.
	frozen.Store(false)
	st, _ = fc.Write(ctx)
	st.Send(&agentv1.WriteFileRequest{Header: &agentv1.WriteFileHeader{Path: f, Mode: &mode}, Data: []byte("new"), Commit: true})
	st.CloseSend()
	var last *agentv1.WriteFileResponse
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = r
	}
	if last == nil || last.Committed == nil || last.Committed.Size != 3 || last.Committed.Mode != 0o600 ||
		last.Committed.Type != agentv1.FileType_FILE_TYPE_REGULAR {
		t.Fatalf("committed: %+v", last)
	}
	if b, _ := os.ReadFile(f); string(b) != "new" {
		t.Fatalf("new file: %q", b)
	}
}

func TestReadChunksAndIfUnchanged(t *testing.T) {
	fc := serveFiles(t, &service.Files{})
	f := filepath.Join(t.TempDir(), "f")
	data := bytes.Repeat([]byte("0123456789"), 250_000) // 2.5 MB: three chunks
	os.WriteFile(f, data, 0o644)
	ctx := context.Background()
	read := func(req *agentv1.ReadFileRequest) ([]*agentv1.ReadFileChunk, error) {
		st, err := fc.Read(ctx, req)
		if err != nil {
			return nil, err
		}
		var out []*agentv1.ReadFileChunk
		for {
			c, err := st.Recv()
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			if err != nil {
				return out, err
			}
			out = append(out, c)
		}
	}
	chunks, err := read(&agentv1.ReadFileRequest{Path: f})
	if err != nil || len(chunks) != 3 || chunks[0].Info == nil || chunks[0].Info.Size != uint64(len(data)) || chunks[1].Info != nil {
		t.Fatalf("chunks: %d, %v", len(chunks), err)
	}
	var got []byte
	for _, c := range chunks {
		if c.Offset != uint64(len(got)) || len(c.Data) > service.FileChunkSize {
			t.Fatalf("chunk at %d of %d bytes, have %d", c.Offset, len(c.Data), len(got))
		}
		got = append(got, c.Data...)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("content differs")
	}
	info := chunks[0].Info
	chunks, err = read(&agentv1.ReadFileRequest{Path: f, Offset: 5, Limit: 3, IfUnchanged: info})
	if err != nil || len(chunks) != 1 || string(chunks[0].Data) != "567" || chunks[0].Offset != 5 {
		t.Fatalf("range: %v %v", chunks, err)
	}
	// Past the end: the info, no data.
	chunks, err = read(&agentv1.ReadFileRequest{Path: f, Offset: 1 << 40})
	if err != nil || len(chunks) != 1 || len(chunks[0].Data) != 0 || chunks[0].Info == nil {
		t.Fatalf("past the end: %v %v", chunks, err)
	}
	os.WriteFile(f, []byte("changed"), 0o644)
	_, err = read(&agentv1.ReadFileRequest{Path: f, Offset: 10, IfUnchanged: info})
	if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "changed since the read began") {
		t.Fatalf("changed file: %v", err)
	}
}
