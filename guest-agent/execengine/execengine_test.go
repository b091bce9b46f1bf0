package execengine

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/guest-agent/reaper"
	"github.com/sailbox/sailbox/guest-agent/spool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var (
	testReaper     *reaper.Reaper
	testReaperOnce sync.Once
)

func newManager(t *testing.T, mut ...func(*Config)) *Manager {
	t.Helper()
	testReaperOnce.Do(func() {
		var err error
		if testReaper, err = reaper.New(nil); err != nil {
			t.Fatal(err)
		}
	})
	cfg := Config{StateDir: t.TempDir(), KillGrace: 500 * time.Millisecond}
	for _, f := range mut {
		f(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m, err := NewManager(ctx, cfg, testReaper)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Shutdown(); cancel() })
	return m
}

func readAll(t *testing.T, sp *spool.Spool) string {
	t.Helper()
	var buf bytes.Buffer
	p := make([]byte, 64<<10)
	var off uint64
	for {
		n, err := sp.ReadAt(p, off)
		buf.Write(p[:n])
		off += uint64(n)
		if err == io.EOF {
			return buf.String()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func run(t *testing.T, m *Manager, spec Spec) (Status, string, string) {
	t.Helper()
	e, _, err := m.Start(spec)
	if err != nil {
		t.Fatalf("start %+v: %v", spec, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := e.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return st, readAll(t, e.Stdout()), readAll(t, e.Stderr())
}

func wantCode(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got error %v (code %s), want code %s", err, status.Code(err), code)
	}
	if !strings.Contains(err.Error(), substr) {
		t.Fatalf("error %q does not mention %q", err, substr)
	}
}

func TestExitCodeAndStreams(t *testing.T) {
	m := newManager(t)
	st, out, errOut := run(t, m, Spec{Command: "echo hi; echo err >&2; exit 3"})
	if st.State != StateExited || st.ExitCode != 3 || out != "hi\n" || errOut != "err\n" {
		t.Fatalf("got state=%s code=%d out=%q err=%q", st.State, st.ExitCode, out, errOut)
	}
	if st.Stdout.Total != 3 || st.Stderr.Total != 4 || st.Ended.Before(st.Started) {
		t.Fatalf("bad accounting: %+v", st)
	}
}

func TestArgvCwdEnv(t *testing.T) {
	m := newManager(t)
	dir := t.TempDir()
	st, out, _ := run(t, m, Spec{Argv: []string{"sh", "-c", `pwd; echo "$FOO"`}, Cwd: dir, Env: []string{"FOO=bar baz"}})
	if st.ExitCode != 0 || out != dir+"\nbar baz\n" {
		t.Fatalf("code=%d out=%q", st.ExitCode, out)
	}
}

func TestSignalledExit(t *testing.T) {
	m := newManager(t)
	st, _, _ := run(t, m, Spec{Command: "kill -9 $$"})
	if st.ExitCode != -1 || st.Signal != syscall.SIGKILL {
		t.Fatalf("got %+v", st)
	}
}

func TestBadInput(t *testing.T) {
	m := newManager(t)
	_, _, err := m.Start(Spec{Command: "  "})
	wantCode(t, err, codes.InvalidArgument, "empty command")
	_, _, err = m.Start(Spec{Command: "true", Cwd: "/does/not/exist"})
	wantCode(t, err, codes.InvalidArgument, "/does/not/exist")
	_, _, err = m.Start(Spec{Command: "true", Timeout: -time.Second})
	wantCode(t, err, codes.InvalidArgument, "negative timeout")
	_, _, err = m.Start(Spec{Command: "true", ID: "bad id/"})
	wantCode(t, err, codes.InvalidArgument, "bad id/")
	_, _, err = m.Start(Spec{Command: "true", Env: []string{"NOEQUALS"}})
	wantCode(t, err, codes.InvalidArgument, "NOEQUALS")
	_, _, err = m.Start(Spec{Argv: []string{"no-such-program-xyz"}})
	wantCode(t, err, codes.InvalidArgument, "no-such-program-xyz")
	_, err = m.Get("nope")
	wantCode(t, err, codes.NotFound, "nope")
	wantCode(t, m.Release("nope"), codes.NotFound, "nope")
}

func TestIdempotentStart(t *testing.T) {
	m := newManager(t)
	marker := filepath.Join(t.TempDir(), "runs")
	spec := Spec{ID: "same-id", Command: "echo run >> " + marker}
	var wg sync.WaitGroup
	created := make(chan bool, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, c, err := m.Start(spec)
			if err != nil {
				t.Error(err)
			}
			created <- c
		}()
	}
	wg.Wait()
	close(created)
	n := 0
	for c := range created {
		if c {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d starts reported created, want 1", n)
	}
	e, _ := m.Get("same-id")
	e.Wait(context.Background())
	b, _ := os.ReadFile(marker)
	if string(b) != "run\n" {
		t.Fatalf("command ran %d times", strings.Count(string(b), "run"))
	}
	_, _, err := m.Start(Spec{ID: "same-id", Command: "echo other"})
	wantCode(t, err, codes.AlreadyExists, "same-id")
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	m := newManager(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	st, _, _ := run(t, m, Spec{Command: "sleep 300 & echo $! > " + pidFile + "; sleep 30", Timeout: 300 * time.Millisecond})
	if st.State != StateTimedOut || !st.TimedOut {
		t.Fatalf("got %+v", st)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("timeout took %v", el)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	waitGone(t, pid)
}

// waitGone waits until pid no longer exists (it may linger briefly as a
// zombie until the reaper runs).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if f := strings.Fields(string(b)); len(f) > 2 && f[2] == "Z" {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d still alive", pid)
}

func TestSignalAndFinishedSignal(t *testing.T) {
	m := newManager(t)
	e, _, err := m.Start(Spec{Command: "sleep 30"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	st, _ := e.Wait(context.Background())
	if st.Signal != syscall.SIGTERM {
		t.Fatalf("got %+v", st)
	}
	wantCode(t, e.Signal(syscall.SIGTERM), codes.FailedPrecondition, "already finished")
}

func TestStdin(t *testing.T) {
	m := newManager(t)
	e, _, err := m.Start(Spec{Command: "tr a-z A-Z", Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := e.WriteStdin(ctx, []byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if err := e.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	e.Wait(ctx)
	if out := readAll(t, e.Stdout()); out != "HELLO\n" {
		t.Fatalf("got %q", out)
	}
	e2, _, _ := m.Start(Spec{Command: "true"})
	_, err = e2.WriteStdin(ctx, []byte("x"))
	wantCode(t, err, codes.FailedPrecondition, "without stdin")
}

func TestPtyDefaultSizeAndResize(t *testing.T) {
	m := newManager(t)
	st, out, _ := run(t, m, Spec{Command: "stty size", TTY: true})
	if st.ExitCode != 0 || strings.TrimSpace(out) != "24 80" {
		t.Fatalf("code=%d out=%q", st.ExitCode, out)
	}
	e, _, err := m.Start(Spec{Command: "read line; stty size", TTY: true, Stdin: true, Rows: 10, Cols: 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Resize(50, 132); err != nil {
		t.Fatal(err)
	}
	e.WriteStdin(context.Background(), []byte("go\r"))
	e.Wait(context.Background())
	if out := readAll(t, e.Stdout()); !strings.Contains(out, "50 132") {
		t.Fatalf("after resize got %q", out)
	}
}

func TestOutputCapIsReportedAsTruncation(t *testing.T) {
	m := newManager(t)
	st, out, _ := run(t, m, Spec{Command: "head -c 100000 /dev/zero", OutputCap: 1000})
	if len(out) != 1000 || !st.Stdout.Truncated || st.Stdout.Total != 100000 || st.Stdout.Kept != 1000 {
		t.Fatalf("len=%d info=%+v", len(out), st.Stdout)
	}
}

func TestBackgroundDescendantDoesNotHoldExec(t *testing.T) {
	m := newManager(t, func(c *Config) { c.DrainGrace = 100 * time.Millisecond })
	start := time.Now()
	st, out, _ := run(t, m, Spec{Command: "sleep 5 & echo started"})
	if st.ExitCode != 0 || out != "started\n" {
		t.Fatalf("got %+v %q", st, out)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("exec waited for its background child: %v", el)
	}
}

func TestReleaseRemovesSpools(t *testing.T) {
	m := newManager(t)
	e, _, _ := m.Start(Spec{ID: "rel", Command: "sleep 0.2; echo x"})
	wantCode(t, m.Release("rel"), codes.FailedPrecondition, "still running")
	e.Wait(context.Background())
	if err := m.Release("rel"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get("rel"); status.Code(err) != codes.NotFound {
		t.Fatalf("released exec still there: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(m.cfg.StateDir, "execs"))
	if len(ents) != 0 {
		t.Fatalf("spool files left: %v", ents)
	}
}

func TestFinishedTTL(t *testing.T) {
	m := newManager(t, func(c *Config) { c.FinishedTTL = 50 * time.Millisecond })
	run(t, m, Spec{ID: "ttl", Command: "true"})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := m.Get("ttl"); status.Code(err) == codes.NotFound {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("finished exec not released after its TTL")
}

// TestThousandConcurrentExecs runs 1,000 `sleep 1` at once and checks that
// no file descriptor or zombie is left behind.
func TestThousandConcurrentExecs(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	m := newManager(t)
	fdsBefore := countFDs(t)
	const n = 1000
	execs := make([]*Exec, 0, n)
	for i := 0; i < n; i++ {
		e, _, err := m.Start(Spec{Command: "sleep 1", ID: fmt.Sprintf("c%d", i)})
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		execs = append(execs, e)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, e := range execs {
		st, err := e.Wait(ctx)
		if err != nil || st.ExitCode != 0 {
			t.Fatalf("exec %s: %v %+v", e.ID(), err, st)
		}
		if err := m.Release(e.ID()); err != nil {
			t.Fatal(err)
		}
	}
	if after := countFDs(t); after > fdsBefore+5 {
		t.Fatalf("file descriptors leaked: %d before, %d after", fdsBefore, after)
	}
	if z := zombies(t); len(z) > 0 {
		t.Fatalf("zombie children left: %v", z)
	}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// zombies lists zombie processes whose parent is this process.
func zombies(t *testing.T) []int {
	var out []int
	me := strconv.Itoa(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[0] == "Z" && f[1] == me {
			out = append(out, pid)
		}
	}
	return out
}

func TestOrphansAreReaped(t *testing.T) {
	m := newManager(t)
	before := testReaper.Orphans()
	run(t, m, Spec{Command: "sh -c 'sleep 0.1 &' ; true"})
	deadline := time.Now().Add(5 * time.Second)
	for testReaper.Orphans() == before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if testReaper.Orphans() == before {
		t.Fatal("orphaned grandchild was not reaped")
	}
	if z := zombies(t); len(z) > 0 {
		t.Fatalf("zombies: %v", z)
	}
}

func TestStateMachineRejectsIllegalMoves(t *testing.T) {
	for _, c := range []struct {
		from, to State
		ok       bool
	}{
		{StateRunning, StateExited, true}, {StateRunning, StateTimedOut, true},
		{StateExited, StateTimedOut, false}, {StateTimedOut, StateExited, false},
		{StateExited, StateRunning, false}, {StateRunning, StateRunning, false},
	} {
		if err := c.from.transition(c.to); (err == nil) != c.ok {
			t.Errorf("%s → %s: err %v, want ok=%v", c.from, c.to, err, c.ok)
		}
	}
	m := newManager(t)
	e, _, err := m.Start(Spec{Command: "true"})
	if err != nil {
		t.Fatal(err)
	}
	e.Wait(context.Background())
	if err := e.finish(0); err == nil || !strings.Contains(err.Error(), e.ID()) {
		t.Fatalf("a second finish was applied: %v", err)
	}
}
