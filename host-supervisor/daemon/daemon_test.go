package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/execstore"
	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type fixture struct {
	t     testing.TB
	dir   string
	cfg   Config
	d     *Daemon
	agent *agenttest.Agent
}

func newFixture(t testing.TB, mod func(*Config)) *fixture {
	f := &fixture{t: t, dir: t.TempDir(), agent: agenttest.Start(t)}
	f.cfg = Config{StateDir: f.dir}
	if mod != nil {
		mod(&f.cfg)
	}
	f.open()
	t.Cleanup(func() {
		if f.d != nil {
			f.d.Close()
		}
	})
	if _, err := f.d.AddSandbox("sb", f.agent.Addr, map[string]string{"team": "a"}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) open() {
	f.t.Helper()
	d, err := Open(f.cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	f.d = d
}

func (f *fixture) restart() {
	f.t.Helper()
	f.d.Close()
	f.d = nil
	f.open()
}

func (f *fixture) start(id, cmd string) *execstore.Record {
	f.t.Helper()
	resp, err := f.d.StartExec(context.Background(), &supervisorv1.StartExecRequest{
		Sandbox: "sb", Request: &agentv1.StartRequest{Id: id, Command: cmd},
	})
	if err != nil {
		f.t.Fatalf("start %s: %v", id, err)
	}
	return resp.Record
}

func (f *fixture) wait(id string) *execstore.Record {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := f.d.WaitExec(ctx, "sb", id)
	if err != nil {
		f.t.Fatalf("wait %s: %v", id, err)
	}
	return r
}

func (f *fixture) output(id string) (string, string, *execstore.Record) {
	f.t.Helper()
	var out, errb bytes.Buffer
	var final *execstore.Record
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := f.d.ExecOutput(ctx, &supervisorv1.ExecOutputRequest{Sandbox: "sb", Id: id, Follow: true}, func(c *supervisorv1.ExecOutputChunk) error {
		if c.Final != nil {
			final = c.Final
			return nil
		}
		w := &out
		if c.Stream == agentv1.Stream_STREAM_STDERR {
			w = &errb
		}
		if uint64(w.Len()) != c.Offset {
			f.t.Errorf("exec %s: chunk at %d, have %d", id, c.Offset, w.Len())
		}
		w.Write(c.Data)
		return nil
	})
	if err != nil {
		f.t.Fatalf("output %s: %v", id, err)
	}
	return out.String(), errb.String(), final
}

func TestExecRoundTrip(t *testing.T) {
	f := newFixture(t, nil)
	r := f.start("one", "echo out; echo err >&2; exit 3")
	if r.Id != "one" || r.Generation != 0 || (r.State != execstore.Running && !execstore.IsFinal(r.State)) {
		t.Fatalf("start: %v", r)
	}
	out, errOut, final := f.output("one")
	if out != "out\n" || errOut != "err\n" || final.State != execstore.Exited || final.ExitCode != 3 {
		t.Fatalf("got %q %q %v", out, errOut, final)
	}
	if final.Stdout.Kept != 4 || final.Stdout.Total != 4 || final.StdoutOffset != 4 || final.Pid == 0 || final.EndedUnixNano == 0 {
		t.Fatalf("final record %v", final)
	}
	// The agent's copy is released once the result is durable.
	cl := f.agent.Client(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := cl.Get(context.Background(), "one")
		if status.Code(err) == codes.NotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent still holds the exec: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// And the result survives a restart.
	f.restart()
	if r := f.wait("one"); r.State != execstore.Exited || r.ExitCode != 3 {
		t.Fatalf("after restart: %v", r)
	}
	if out, errOut, _ := f.output("one"); out != "out\n" || errOut != "err\n" {
		t.Fatalf("after restart: %q %q", out, errOut)
	}
	// A refused start is a failed record with the agent's code.
	_, err := f.d.StartExec(context.Background(), &supervisorv1.StartExecRequest{
		Sandbox: "sb", Request: &agentv1.StartRequest{Id: "badcwd", Command: "true", Cwd: "/does/not/exist"},
	})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad cwd: %v", err)
	}
	if r := f.wait("badcwd"); r.State != execstore.Failed || r.ErrorCode != int32(codes.InvalidArgument) || !strings.Contains(r.Reason, "/does/not/exist") {
		t.Fatalf("bad cwd record: %v", r)
	}
	if _, err := f.d.StartExec(context.Background(), &supervisorv1.StartExecRequest{Sandbox: "nope", Request: &agentv1.StartRequest{Command: "true"}}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown sandbox: %v", err)
	}
}

// The same idempotency key never runs twice, also across a restart.
func TestIdempotencyKey(t *testing.T) {
	f := newFixture(t, nil)
	marker := filepath.Join(t.TempDir(), "ran")
	req := &supervisorv1.StartExecRequest{Sandbox: "sb", IdempotencyKey: "k", Request: &agentv1.StartRequest{Command: "echo x >> " + marker}}
	r1, err := f.d.StartExec(context.Background(), req)
	if err != nil || !r1.Created {
		t.Fatal(r1, err)
	}
	f.wait(r1.Record.Id)
	f.restart()
	r2, err := f.d.StartExec(context.Background(), req)
	if err != nil || r2.Created || r2.Record.Id != r1.Record.Id || r2.Record.State != execstore.Exited {
		t.Fatalf("retry: %v %v", r2, err)
	}
	other := &supervisorv1.StartExecRequest{Sandbox: "sb", IdempotencyKey: "k", Request: &agentv1.StartRequest{Command: "echo y"}}
	if _, err := f.d.StartExec(context.Background(), other); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("other request, same key: %v", err)
	}
	if b, _ := os.ReadFile(marker); string(b) != "x\n" {
		t.Fatalf("ran %q", b)
	}
}

// A restart in the middle of a streaming exec re-attaches at the journalled
// offsets; bytes past them in the file (never journalled) are cut, so the
// output is exact. Stdout is large (a file), stderr small (inline in the
// journal).
func TestReattachAfterRestart(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.FlushInterval = 20 * time.Millisecond })
	pad := strings.Repeat("x", 6000)
	f.start("seq", "for i in $(seq 1 40); do echo line $i "+pad+"; echo e$i >&2; sleep 0.02; done")
	// Stop once part of stdout is journalled in its file.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r, err := f.d.store.Get("seq"); err == nil && r.StdoutOffset > InlineMax {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no output journalled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.d.Close()
	f.d = nil
	// Bytes a crash left past the journalled offset.
	fh, err := os.OpenFile(filepath.Join(f.dir, "out", "seq.stdout"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteString("GARBAGE NEVER JOURNALLED\n")
	fh.Close()
	time.Sleep(200 * time.Millisecond)
	f.open()
	out, errOut, final := f.output("seq")
	var want, wantErr strings.Builder
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&want, "line %d %s\n", i, pad)
		fmt.Fprintf(&wantErr, "e%d\n", i)
	}
	if out != want.String() || errOut != wantErr.String() || final.State != execstore.Exited {
		t.Fatalf("after re-attach: %d bytes stdout (want %d), stderr %q, %v", len(out), want.Len(), errOut, final)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "out", "seq.stderr")); !os.IsNotExist(err) {
		t.Fatalf("small stderr has a file: %v", err)
	}
}

// After a crash between journalling and sending, the agent decides: an
// exec it knows is followed to its end; one it does not know is lost and
// never sent.
func TestAcceptedRecordsResolvedNotResent(t *testing.T) {
	f := newFixture(t, nil)
	f.d.Close()
	f.d = nil
	marker := filepath.Join(t.TempDir(), "ran")
	st, err := execstore.Open(filepath.Join(f.dir, "journal.db"), execstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"known", "unknown"} {
		req := &agentv1.StartRequest{Id: id, Command: "echo " + id + " >> " + marker + "; echo done"}
		if _, _, err := st.Accept(&execstore.Record{Id: id, Sandbox: "sb", IdempotencyKey: id, Request: req}); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	// "known" reached the agent before the crash.
	cl := f.agent.Client(t)
	if _, err := cl.Start(context.Background(), &agentv1.StartRequest{Id: "known", Command: "echo known >> " + marker + "; echo done"}); err != nil {
		t.Fatal(err)
	}
	f.open()
	if r := f.wait("known"); r.State != execstore.Exited {
		t.Fatalf("known: %v", r)
	}
	if out, _, _ := f.output("known"); out != "done\n" {
		t.Fatalf("known output %q", out)
	}
	if r := f.wait("unknown"); r.State != execstore.Lost || r.Reason != reasonCrashedBeforeAck {
		t.Fatalf("unknown: %v", r)
	}
	time.Sleep(100 * time.Millisecond)
	if b, _ := os.ReadFile(marker); string(b) != "known\n" {
		t.Fatalf("marker %q: something ran that should not have", b)
	}
}

func TestOutputCap(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.OutputCap = 1000 })
	f.start("big", "head -c 5000 /dev/zero; echo small >&2")
	out, errOut, final := f.output("big")
	if len(out) != 1000 || errOut != "small\n" {
		t.Fatalf("kept %d bytes stdout, stderr %q", len(out), errOut)
	}
	if !final.Stdout.Truncated || final.Stdout.Kept != 1000 || final.Stdout.Total != 5000 || final.Stderr.Truncated {
		t.Fatalf("stream info %v / %v", final.Stdout, final.Stderr)
	}
}

func TestRestoreGeneration(t *testing.T) {
	f := newFixture(t, nil)
	f.start("before", "sleep 30")
	if _, err := f.d.Checkpointed("sb", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := f.d.Checkpointed("sb", 1); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("same generation again: %v", err)
	}
	after := f.start("after", "sleep 30")
	if after.Generation != 1 {
		t.Fatalf("generation %d", after.Generation)
	}
	f.start("quick", "true")
	f.wait("quick")
	resp, err := f.d.RestoreGeneration("sb", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Lost) != 1 || resp.Lost[0] != "after" {
		t.Fatalf("lost %v", resp.Lost)
	}
	if r := f.wait("after"); r.State != execstore.Lost || !strings.HasPrefix(r.Reason, "not replayed") {
		t.Fatalf("after: %v", r)
	}
	if r, _ := f.d.GetExec("sb", "quick"); r.State != execstore.Exited {
		t.Fatalf("finished exec changed: %v", r)
	}
	if r, _ := f.d.GetExec("sb", "before"); r.State != execstore.Running {
		t.Fatalf("exec from before the checkpoint: %v", r)
	}
	if _, err := f.d.RestoreGeneration("sb", 5); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("restore to a future checkpoint: %v", err)
	}
	f.d.SignalExec(context.Background(), "sb", "before", 9)
	if r := f.wait("before"); r.State != execstore.Exited || r.Signal != 9 {
		t.Fatalf("before: %v", r)
	}
}

func TestListPagesAndRetention(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Retention = 300 * time.Millisecond })
	for i := range 5 {
		f.start(fmt.Sprintf("e%d", i), "echo hi")
	}
	var ids []string
	token := ""
	for pages := 1; ; pages++ {
		resp, err := f.d.ListExecs(&supervisorv1.ListExecsRequest{Sandbox: "sb", PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.Execs {
			ids = append(ids, r.Id)
		}
		if token = resp.NextPageToken; token == "" {
			if pages != 3 {
				t.Fatalf("%d pages", pages)
			}
			break
		}
	}
	if strings.Join(ids, ",") != "e0,e1,e2,e3,e4" {
		t.Fatalf("listed %v", ids)
	}
	for _, id := range ids {
		f.wait(id)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := f.d.GetExec("sb", "e0")
		if status.Code(err) == codes.NotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("retention did not delete e0")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "out", "e0.stdout")); !os.IsNotExist(err) {
		t.Fatalf("output of a deleted exec still there: %v", err)
	}
}

func TestRemoveSandboxLosesItsExecs(t *testing.T) {
	f := newFixture(t, nil)
	f.start("long", "sleep 30")
	if err := f.d.RemoveSandbox("sb"); err != nil {
		t.Fatal(err)
	}
	r, err := f.d.GetExec("", "long")
	deadline := time.Now().Add(5 * time.Second)
	for err == nil && r.State != execstore.Lost && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		r, err = f.d.GetExec("", "long")
	}
	if err != nil || r.State != execstore.Lost {
		t.Fatalf("%v %v", r, err)
	}
	if len(f.d.ListSandboxes()) != 0 {
		t.Fatal("sandbox still listed")
	}
}

// Files and listener readiness pass through to the sandbox's agent.
func TestPassThrough(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "data")
	want := bytes.Repeat([]byte("0123456789abcdef"), 100000) // 1.6 MB: several chunks
	if err := os.WriteFile(path, want, 0o640); err != nil {
		t.Fatal(err)
	}
	var got []byte
	var info *agentv1.FileInfo
	err := f.d.ReadFile(ctx, "sb", &agentv1.ReadFileRequest{Path: path}, func(c *agentv1.ReadFileChunk) error {
		if c.Info != nil {
			info = c.Info
		}
		if c.Offset != uint64(len(got)) || len(c.Data) > OutputChunkSize {
			t.Errorf("chunk at %d (%d bytes), have %d", c.Offset, len(c.Data), len(got))
		}
		got = append(got, c.Data...)
		return nil
	})
	if err != nil || !bytes.Equal(got, want) || info == nil {
		t.Fatalf("read: %v, %d bytes, info %v", err, len(got), info)
	}
	st, err := f.d.StatFile(ctx, "sb", path)
	if err != nil || st.Size != uint64(len(want)) {
		t.Fatalf("stat: %v %v", st, err)
	}
	if _, err := f.d.StatFile(ctx, "sb", path+".missing"); status.Code(err) != codes.NotFound {
		t.Fatalf("stat missing: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint32(ln.Addr().(*net.TCPAddr).Port)
	resp, err := f.d.WaitListener(ctx, "sb", &agentv1.WaitListenerRequest{Port: port, TimeoutMs: 5000})
	if err != nil || resp.Port != port {
		t.Fatalf("wait listener: %v %v", resp, err)
	}
}
