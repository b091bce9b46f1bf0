package service

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// serveFiles serves the Files service, with or without data connections.
func serveFiles(t *testing.T, withData bool) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	f := &Files{}
	agentv1.RegisterFilesService(srv, f)
	var ln net.Listener = l
	if withData {
		ln = Mux(l, nil, f, nil)
	}
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + sock
}

// File reads give the same bytes, info and errors over data connections
// (sendfile) as over ttrpc.
func TestReadFileWithAndWithoutDataConnections(t *testing.T) {
	dir := t.TempDir()
	content := make([]byte, 3<<20+12345) // several frames and a partial one
	rand.Read(content)
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, content, 0o640); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, withData := range []bool{true, false} {
		cl, err := agentclient.New(serveFiles(t, withData), agentclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		var got bytes.Buffer
		info, n, err := cl.ReadFile(ctx, path, &got, agentclient.ReadOptions{})
		if err != nil || n != uint64(len(content)) || !bytes.Equal(got.Bytes(), content) || info.GetSize() != uint64(len(content)) || info.GetMode()&0o777 != 0o640 {
			t.Fatalf("data=%v: read %d bytes (equal=%v), info %v, err %v", withData, n, bytes.Equal(got.Bytes(), content), info, err)
		}
		got.Reset()
		_, n, err = cl.ReadFile(ctx, path, &got, agentclient.ReadOptions{Offset: 1<<20 + 7, Limit: 2 << 20})
		if err != nil || n != 2<<20 || !bytes.Equal(got.Bytes(), content[1<<20+7:3<<20+7]) {
			t.Fatalf("data=%v: ranged read %d bytes, %v", withData, n, err)
		}
		got.Reset()
		info, n, err = cl.ReadFile(ctx, path, &got, agentclient.ReadOptions{Offset: uint64(len(content)) + 10})
		if err != nil || n != 0 || info.GetSize() != uint64(len(content)) {
			t.Fatalf("data=%v: read past the end: %d, %v, %v", withData, n, info, err)
		}
		for p, code := range map[string]codes.Code{fifo: codes.FailedPrecondition, dir: codes.FailedPrecondition, filepath.Join(dir, "nope"): codes.NotFound, "relative": codes.InvalidArgument} {
			if _, _, err := cl.ReadFile(ctx, p, &got, agentclient.ReadOptions{}); status.Code(err) != code {
				t.Fatalf("data=%v: read %s: %v, want %s", withData, p, err, code)
			}
		}
		// The connection stays usable after errors.
		got.Reset()
		if _, _, err := cl.ReadFile(ctx, path, &got, agentclient.ReadOptions{Limit: 5}); err != nil || !bytes.Equal(got.Bytes(), content[:5]) {
			t.Fatalf("data=%v: read after errors: %v", withData, err)
		}
	}
}
