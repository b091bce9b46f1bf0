package agentclient_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// Run starts, streams and returns the final status in one request, and
// releases the execs it named itself (on the next request, or at Close).
func TestRunReleasesItsOwnExecs(t *testing.T) {
	a := agenttest.Start(t)
	cl := a.Client(t)
	var out, errb bytes.Buffer
	st, err := cl.Run(ctx(t), &agentv1.StartRequest{Command: "echo out; echo err >&2; exit 3"}, &out, &errb)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != "out\n" || errb.String() != "err\n" || st.ExitCode != 3 || st.State != agentv1.ExecState_EXEC_STATE_EXITED {
		t.Fatalf("stdout %q stderr %q status %v", out.String(), errb.String(), st)
	}
	first := st.Id
	if _, err := cl.Get(ctx(t), first); err != nil {
		t.Fatalf("exec %s is gone before its release could ride on a request: %v", first, err)
	}
	st, err = cl.Run(ctx(t), &agentv1.StartRequest{Argv: []string{"/bin/true"}}, &out, &errb)
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("second run: %v %v", st, err)
	}
	if _, err := cl.Get(ctx(t), first); status.Code(err) != codes.NotFound {
		t.Fatalf("exec %s after the next Run: %v, want NotFound (released)", first, err)
	}
	second := st.Id
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	other := a.Client(t)
	if _, err := other.Get(ctx(t), second); status.Code(err) != codes.NotFound {
		t.Fatalf("exec %s after Close: %v, want NotFound (released)", second, err)
	}
}

// A caller-named exec is idempotent and kept: a second Run with the same id
// returns the same exec and output without running the command again.
func TestRunWithIDRunsOnce(t *testing.T) {
	a := agenttest.Start(t)
	cl := a.Client(t)
	marks := filepath.Join(t.TempDir(), "marks")
	req := &agentv1.StartRequest{Id: "once-1", Command: "echo ran >> " + marks + "; echo hello"}
	for range 2 {
		var out bytes.Buffer
		st, err := cl.Run(ctx(t), req, &out, &out)
		if err != nil || st.Id != "once-1" || out.String() != "hello\n" {
			t.Fatalf("run: %q %v %v", out.String(), st, err)
		}
	}
	b, err := os.ReadFile(marks)
	if err != nil || strings.Count(string(b), "ran") != 1 {
		t.Fatalf("the command ran %d times (%q, %v), want once", strings.Count(string(b), "ran"), b, err)
	}
	if _, err := cl.Get(ctx(t), "once-1"); err != nil {
		t.Fatalf("a caller-named exec must be kept: %v", err)
	}
}

// Output with a start needs the host-chosen id (a retry must not run twice).
func TestOutputStartNeedsID(t *testing.T) {
	a := agenttest.Start(t)
	cl := a.Client(t)
	var out bytes.Buffer
	_, _, err := cl.CopyOutput(ctx(t), "", agentclient.Offsets{}, true, &out, &out)
	if status.Code(err) != codes.NotFound {
		t.Fatalf("output of no exec: %v", err)
	}
	_, err = cl.Run(ctx(t), &agentv1.StartRequest{Id: "bad id!", Command: "true"}, &out, &out)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad id: %v, want InvalidArgument", err)
	}
	nc, err := transport.Dial(ctx(t), a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(nc)
	defer tc.Close()
	for _, req := range []*agentv1.OutputRequest{
		{Follow: true, Start: &agentv1.StartRequest{Command: "true"}},
		{Id: "a", Follow: true, Start: &agentv1.StartRequest{Id: "b", Command: "true"}},
	} {
		stream, err := agentv1.NewExecClient(tc).Output(ctx(t), req)
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("output %v: %v, want InvalidArgument", req, err)
		}
	}
}
