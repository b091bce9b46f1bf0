package service

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/guest-agent/execengine"
	"github.com/sailbox/sailbox/guest-agent/reaper"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// serveExec serves the Exec service on a fresh unix socket, with or without
// data connections, and returns its address.
func serveExec(t *testing.T, m *execengine.Manager, withData bool) string {
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
	svc := &Exec{M: m}
	agentv1.RegisterExecService(srv, svc)
	var ln net.Listener = l
	if withData {
		ln = Mux(l, svc, nil, nil)
	}
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + sock
}

// Run works the same over data connections and, against an agent without
// them, over ttrpc: output byte for byte, exit status, errors as codes.
func TestRunWithAndWithoutDataConnections(t *testing.T) {
	r, err := reaper.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := execengine.NewManager(ctx, execengine.Config{StateDir: t.TempDir()}, r)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown()
	big := strings.Repeat("0123456789abcdef", 1<<17) // 2 MiB: more than one frame
	for _, withData := range []bool{true, false} {
		cl, err := agentclient.New(serveExec(t, m, withData), agentclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		st, err := cl.Run(ctx, &agentv1.StartRequest{
			Command: "head -c 2097152 /dev/zero | tr '\\0' x; printf 'e%.0s' 1 2 3 >&2; exit 4",
		}, &out, &errb)
		if err != nil || st.ExitCode != 4 || out.Len() != len(big) || strings.Trim(out.String(), "x") != "" || errb.String() != "eee" {
			t.Fatalf("data=%v: %d bytes out, stderr %q, status %v, %v", withData, out.Len(), errb.String(), st, err)
		}
		// Resuming from an offset, without follow, sees the rest only.
		st, err = cl.Run(ctx, &agentv1.StartRequest{Id: "kept", Command: "echo hello"}, &out, &errb)
		if err != nil || st.ExitCode != 0 {
			t.Fatalf("data=%v: %v %v", withData, st, err)
		}
		var rest bytes.Buffer
		final, off, err := cl.CopyOutput(ctx, "kept", agentclient.Offsets{Stdout: 2}, false, &rest, &rest)
		if err != nil || final != nil || rest.String() != "llo\n" || off.Stdout != 6 {
			t.Fatalf("data=%v: resumed read %q, %v, %+v, %v", withData, rest.String(), final, off, err)
		}
		_, _, err = cl.CopyOutput(ctx, "kept", agentclient.Offsets{Stdout: 99}, false, &rest, &rest)
		if status.Code(err) != codes.OutOfRange {
			t.Fatalf("data=%v: read past the end: %v, want OutOfRange", withData, err)
		}
		_, _, err = cl.CopyOutput(ctx, "nope", agentclient.Offsets{}, true, &rest, &rest)
		if status.Code(err) != codes.NotFound {
			t.Fatalf("data=%v: unknown exec: %v, want NotFound", withData, err)
		}
		if err := cl.Release(ctx, "kept"); err != nil {
			t.Fatal(err)
		}
		cl.Close()
	}
}
