package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

type result struct {
	stdout, stderr string
	code           int
	elapsed        time.Duration
}

// cli runs host-supervisor with args and returns its output and exit status.
func cli(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	cmd := exec.Command(agenttest.Supervisor(t), args...)
	cmd.Env = agenttest.Env()
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), elapsed: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run host-supervisor %v: %v", args, err)
	}
	return r
}

func TestExecAcceptance(t *testing.T) {
	a := agenttest.Start(t)
	r := cli(t, nil, "exec", "--agent", a.Addr, "--", "echo hi; echo err >&2; exit 3")
	if r.stdout != "hi\n" || r.stderr != "err\n" || r.code != 3 {
		t.Fatalf("got %+v", r)
	}
}

func TestExecTimeoutLeavesNothingBehind(t *testing.T) {
	a := agenttest.Start(t)
	pidFile := filepath.Join(t.TempDir(), "grandchild.pid")
	r := cli(t, nil, "exec", "--agent", a.Addr, "--timeout", "1s", "--",
		fmt.Sprintf("sleep 300 & echo $! > %s; sleep 30", pidFile))
	if r.code != 124 {
		t.Fatalf("exit %d, want 124 (%+v)", r.code, r)
	}
	if r.elapsed > 3*time.Second {
		t.Fatalf("timeout took %v, want < 3s", r.elapsed)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(3 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d survived the timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

func TestLargeBinaryOutputIsByteIdentical(t *testing.T) {
	a := agenttest.Start(t)
	src := filepath.Join(t.TempDir(), "src.bin")
	cmd := exec.Command(agenttest.Supervisor(t), "exec", "--agent", a.Addr, "--",
		"head -c 50000000 /dev/urandom | tee "+src)
	cmd.Env = agenttest.Env()
	h := sha256.New()
	cmd.Stdout = h
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s", err, errb.String())
	}
	want, err := fileSHA(src)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Fatalf("sha256 mismatch: client %s, guest %s", got, want)
	}
}

func fileSHA(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func TestBackgroundWaitLogsPsKill(t *testing.T) {
	a := agenttest.Start(t)
	r := cli(t, nil, "exec", "--agent", a.Addr, "--background", "--id", "job-1", "--", "echo started; sleep 0.5; echo done; exit 4")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "job-1" {
		t.Fatalf("background: %+v", r)
	}
	if r := cli(t, nil, "ps", "--agent", a.Addr); !strings.Contains(r.stdout, "job-1") || !strings.Contains(r.stdout, "running") {
		t.Fatalf("ps: %+v", r)
	}
	if r := cli(t, nil, "wait", "--agent", a.Addr, "job-1"); r.code != 4 {
		t.Fatalf("wait: %+v", r)
	}
	if r := cli(t, nil, "logs", "--agent", a.Addr, "job-1"); r.stdout != "started\ndone\n" {
		t.Fatalf("logs: %+v", r)
	}
	cli(t, nil, "exec", "--agent", a.Addr, "--background", "--id", "job-2", "--", "sleep 30")
	if r := cli(t, nil, "kill", "--agent", a.Addr, "--signal", "KILL", "job-2"); r.code != 0 {
		t.Fatalf("kill: %+v", r)
	}
	if r := cli(t, nil, "wait", "--agent", a.Addr, "job-2"); r.code != 128+9 {
		t.Fatalf("wait after kill: %+v", r)
	}
	// logs --follow on a running exec streams until it ends.
	cli(t, nil, "exec", "--agent", a.Addr, "--background", "--id", "job-3", "--", "for i in 1 2 3; do echo $i; sleep 0.1; done")
	if r := cli(t, nil, "logs", "--follow", "--agent", a.Addr, "job-3"); r.stdout != "1\n2\n3\n" {
		t.Fatalf("logs --follow: %+v", r)
	}
}

func TestExitStatusRules(t *testing.T) {
	a := agenttest.Start(t)
	if r := cli(t, nil, "exec", "--agent", a.Addr, "--", "kill -TERM $$"); r.code != 128+15 {
		t.Fatalf("signal: %+v", r)
	}
	if r := cli(t, strings.NewReader("abc"), "exec", "--stdin", "--agent", a.Addr, "--", "tr a-c x-z"); r.stdout != "xyz" {
		t.Fatalf("stdin: %+v", r)
	}
	if r := cli(t, nil, "exec", "--agent", a.Addr, "--env", "A=1", "--env", "B=two", "--cwd", "/tmp", "--", `echo "$A $B $(pwd)"`); r.stdout != "1 two /tmp\n" {
		t.Fatalf("env/cwd: %+v", r)
	}
}

func TestBadInputGetsClearErrors(t *testing.T) {
	a := agenttest.Start(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"exec", "--agent", a.Addr, "--", ""}, "error: InvalidArgument: exec: empty command"},
		{[]string{"exec", "--agent", a.Addr, "--cwd", "/nope", "--", "true"}, "error: InvalidArgument:"},
		{[]string{"exec", "--agent", a.Addr, "--timeout", "-1s", "--", "true"}, "error: InvalidArgument: negative timeout"},
		{[]string{"wait", "--agent", a.Addr, "no-such-exec"}, "error: NotFound: exec no-such-exec not found"},
		{[]string{"exec", "--agent", "tcp://1.2.3.4:5", "--", "true"}, `error: InvalidArgument: address "tcp://1.2.3.4:5": unknown scheme`},
		{[]string{"kill", "--agent", a.Addr, "--signal", "BOGUS", "x"}, "error: InvalidArgument: unknown signal"},
	}
	for _, c := range cases {
		r := cli(t, nil, c.args...)
		if r.code != 125 || !strings.HasPrefix(r.stderr, c.want) {
			t.Errorf("%v: exit %d stderr %q, want 125 and %q", c.args, r.code, r.stderr, c.want)
		}
	}
	// The same id with a different command.
	cli(t, nil, "exec", "--agent", a.Addr, "--id", "dup", "--", "true")
	if r := cli(t, nil, "exec", "--agent", a.Addr, "--id", "dup", "--", "false"); r.code != 125 || !strings.Contains(r.stderr, "AlreadyExists") {
		t.Errorf("duplicate id: %+v", r)
	}
	// The same id and command again is an idempotent retry: same result, not a second run.
	if r := cli(t, nil, "exec", "--agent", a.Addr, "--id", "dup", "--", "true"); r.code != 0 {
		t.Errorf("idempotent retry: %+v", r)
	}
	// Signal to a finished exec.
	if r := cli(t, nil, "kill", "--agent", a.Addr, "dup"); r.code != 125 || !strings.Contains(r.stderr, "FailedPrecondition") {
		t.Errorf("kill finished: %+v", r)
	}
	// A hybrid socket that answers garbage.
	sock := filepath.Join(t.TempDir(), "garbage.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("GARBAGE\n"))
			c.Close()
		}
	}()
	if r := cli(t, nil, "exec", "--agent", "hvsock://"+sock+":10000", "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "refused") {
		t.Errorf("hybrid garbage: %+v", r)
	}
	// After all that, the agent still serves.
	if r := cli(t, nil, "exec", "--agent", a.Addr, "--", "echo alive"); r.stdout != "alive\n" {
		t.Fatalf("agent stopped serving: %+v", r)
	}
}

func TestCtrlCForwardsSIGINT(t *testing.T) {
	a := agenttest.Start(t)
	cmd := exec.Command(agenttest.Supervisor(t), "exec", "--agent", a.Addr, "--",
		`trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 0.05; done`)
	cmd.Env = agenttest.Env()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(stdout)
	if line, _ := br.ReadString('\n'); line != "ready\n" {
		t.Fatalf("got %q", line)
	}
	cmd.Process.Signal(syscall.SIGINT)
	rest, _ := io.ReadAll(br)
	err := cmd.Wait()
	if string(rest) != "got-int\n" {
		t.Fatalf("remote did not see SIGINT: %q", rest)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
		t.Fatalf("exit: %v", err)
	}
}

// TestOutputResumesAcrossDroppedConnections cuts the client's connection
// every 3 MiB while a large output streams; the client redials and
// resumes at its offsets, so every byte arrives exactly once.
func TestOutputResumesAcrossDroppedConnections(t *testing.T) {
	a := agenttest.Start(t)
	proxy := newCuttingProxy(t, a.Socket, 3<<20) // > one 1 MiB output chunk
	cl, err := agentclient.New("unix://"+proxy, agentclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	src := filepath.Join(t.TempDir(), "src")
	resp, err := cl.Start(ctx, &agentv1.StartRequest{Id: "resume", Command: "head -c 20000000 /dev/urandom | tee " + src + "; echo tail >&2"})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	var errb bytes.Buffer
	final, _, err := cl.CopyOutput(ctx, resp.Status.Id, agentclient.Offsets{}, true, h, &errb)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := fileSHA(src)
	if got := hex.EncodeToString(h.Sum(nil)); got != want || errb.String() != "tail\n" || final.ExitCode != 0 {
		t.Fatalf("sha %s want %s, stderr %q, final %+v", got, want, errb.String(), final)
	}
	if proxy := proxyCuts.Load(); proxy < 3 {
		t.Fatalf("only %d connection cuts happened; the test did not exercise resume", proxy)
	}
}

func TestClientDisconnectMidStreamKeepsAgentServing(t *testing.T) {
	a := agenttest.Start(t)
	for i := 0; i < 5; i++ {
		nc, err := net.Dial("unix", a.Socket)
		if err != nil {
			t.Fatal(err)
		}
		tc := ttrpc.NewClient(nc)
		ec := agentv1.NewExecClient(tc)
		ctx := context.Background()
		id := fmt.Sprintf("cut-%d", i)
		if _, err := ec.Start(ctx, &agentv1.StartRequest{Id: id, Command: "yes | head -c 20000000"}); err != nil {
			t.Fatal(err)
		}
		st, err := ec.Output(ctx, &agentv1.OutputRequest{Id: id, Follow: true})
		if err != nil {
			t.Fatal(err)
		}
		st.Recv()
		tc.Close() // vanish mid-stream
	}
	cl := a.Client(t)
	var out bytes.Buffer
	st, _, err := cl.CopyOutput(context.Background(), "cut-4", agentclient.Offsets{}, true, &out, io.Discard)
	if err != nil || out.Len() != 20000000 || st.ExitCode != 0 {
		t.Fatalf("after disconnects: %v, %d bytes, %+v", err, out.Len(), st)
	}
}

var proxyCuts atomicCounter

type atomicCounter struct {
	mu sync.Mutex
	n  int
}

func (c *atomicCounter) Add()      { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *atomicCounter) Load() int { c.mu.Lock(); defer c.mu.Unlock(); return c.n }

// newCuttingProxy forwards a unix socket to target and cuts each connection
// after it carried cutAfter bytes from the agent.
func newCuttingProxy(t *testing.T, target string, cutAfter int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "proxy.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(up, c); up.Close() }()
			go func() {
				n, _ := io.CopyN(c, up, cutAfter)
				if n == cutAfter {
					proxyCuts.Add()
				}
				c.Close()
				up.Close()
			}()
		}
	}()
	return path
}
