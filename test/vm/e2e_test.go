package vmtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/vm"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
)

// artefacts are the boot inputs shared by the tests of this package.
type artefacts struct {
	kernel     vm.Kernel
	withAgent  string // initramfs: imageinit + guest-agent + busybox + vsock modules
	bareInit   string // initramfs: imageinit + busybox + vsock modules, no agent
	cli        string // host-supervisor for this machine
	buildTimes string
}

func prepare(t testing.TB) artefacts {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs; not in -short")
	}
	testcap.Command(t, "qemu-system-aarch64")
	testcap.Command(t, "apt-get")
	testcap.Command(t, "dpkg-deb")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	f := &vm.Fetcher{}
	k, err := f.Kernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := f.Busybox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fetched := time.Since(start)
	dir := t.TempDir()
	initBin, agentBin := filepath.Join(dir, "imageinit"), filepath.Join(dir, "guest-agent")
	if err := vm.BuildArm64(ctx, "github.com/sailbox/sailbox/imageinit", initBin); err != nil {
		t.Fatal(err)
	}
	if err := vm.BuildArm64(ctx, "github.com/sailbox/sailbox/guest-agent", agentBin); err != nil {
		t.Fatal(err)
	}
	cli := filepath.Join(dir, "host-supervisor")
	// The Makefile's flags, so a `make build` before `go test` leaves it cached.
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", cli, "github.com/sailbox/sailbox/host-supervisor")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build host-supervisor: %v\n%s", err, out)
	}
	built := time.Since(start) - fetched
	a := artefacts{kernel: k, cli: cli, withAgent: filepath.Join(dir, "agent.cpio"), bareInit: filepath.Join(dir, "bare.cpio")}
	img := vm.Image{Init: initBin, Agent: agentBin, Busybox: bb, Kernel: k, Modules: append(append([]string{}, vm.VsockModules...), vm.AgentModules...), Hostname: "e2e"}
	if err := vm.BuildInitramfs(a.withAgent, img); err != nil {
		t.Fatal(err)
	}
	img.Agent = ""
	if err := vm.BuildInitramfs(a.bareInit, img); err != nil {
		t.Fatal(err)
	}
	a.buildTimes = fmt.Sprintf("fetch %v, go build %v, initramfs %v", fetched.Round(time.Millisecond),
		built.Round(time.Millisecond), (time.Since(start) - fetched - built).Round(time.Millisecond))
	return a
}

// bareBoot boots imageinit alone (sailbox.bootonly): the baseline of the
// boot-time figures. It returns QEMU start -> imageinit ready, and QEMU's
// CPU time for the whole boot and power-off.
func bareBoot(t testing.TB, a artefacts) (time.Duration, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := vm.Start(ctx, vm.Config{Name: "bare", Dir: t.TempDir(), Kernel: a.kernel, Initramfs: a.bareInit,
		Cmdline: []string{"sailbox.bootonly", "sailbox.agent=none"}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Kill()
	ready, err := v.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Wait(ctx); err != nil {
		t.Fatalf("bare boot: QEMU: %v", err)
	}
	return ready, v.CPUTime()
}

var execSeq atomic.Int64

// agentOpts keep the redial backoff short: the hybrid socket is local and a
// booting guest answers "not listening yet" in microseconds.
var agentOpts = agentclient.Options{Dial: transport.DialOptions{MaxBackoff: 50 * time.Millisecond}}

// waitListener calls the agent's Listener.Wait on its own connection.
func waitListener(ctx context.Context, addr string, req *agentv1.WaitListenerRequest) (*agentv1.WaitListenerResponse, error) {
	nc, err := transport.DialWith(ctx, addr, agentOpts.Dial)
	if err != nil {
		return nil, err
	}
	tc := ttrpc.NewClient(nc)
	defer tc.Close()
	return agentv1.NewListenerClient(tc).Wait(ctx, req)
}

// result is one finished exec.
type result struct {
	stdout, stderr string
	st             *agentv1.ExecStatus
}

// run starts req (with a fresh id), follows its output to the end and
// releases it.
func run(ctx context.Context, c *agentclient.Client, req *agentv1.StartRequest) (result, error) {
	if req.Id == "" {
		req.Id = fmt.Sprintf("e2e-%d", execSeq.Add(1))
	}
	if _, err := c.Start(ctx, req); err != nil {
		return result{}, fmt.Errorf("start %s: %w", req.Id, err)
	}
	var o, e bytes.Buffer
	st, _, err := c.CopyOutput(ctx, req.Id, agentclient.Offsets{}, true, &o, &e)
	if err != nil {
		return result{}, fmt.Errorf("output %s: %w", req.Id, err)
	}
	c.Release(ctx, req.Id)
	return result{o.String(), e.String(), st}, nil
}

// TestVMEndToEnd is the whole path: boot, execs, a background server, an
// agent killed and restarted, a clean power-off. It also logs the
// boot-to-first-exec time beside a bare-init boot of the same run.
func TestVMEndToEnd(t *testing.T) {
	testStart := time.Now()
	a := prepare(t)
	t.Logf("artefacts: %s (kernel %s %s)", a.buildTimes, a.kernel.Package, a.kernel.Version)
	bare, bareCPU := bareBoot(t, a)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	v, err := vm.Start(ctx, vm.Config{Name: "e2e", Dir: dir, Kernel: a.kernel, Initramfs: a.withAgent,
		NewVsock: vm.DefaultVsock})
	if err != nil {
		t.Fatal(err)
	}
	qemuPID := v.PID()
	t.Cleanup(func() {
		v.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
			t.Logf("console:\n%s", b)
		}
	})
	c, err := agentclient.New(v.AgentAddr(), agentOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// 1. First exec: uname -m, timed from QEMU's start.
	r, err := run(ctx, c, &agentv1.StartRequest{Command: "uname -m"})
	if err != nil {
		t.Fatal(err)
	}
	firstExec := time.Since(v.Started())
	firstCPU := v.CPUTime()
	ready, _ := v.WaitReady(ctx)
	if r.stdout != "aarch64\n" || r.st.ExitCode != 0 {
		t.Fatalf("uname -m: %q, status %v", r.stdout, r.st)
	}
	t.Logf("BOOT: bare imageinit ready %v (QEMU CPU %v to power-off) | with agent: imageinit ready %v, first exec (uname -m) done %v after QEMU start (QEMU CPU %v)",
		bare.Round(time.Millisecond), bareCPU, ready.Round(time.Millisecond), firstExec.Round(time.Millisecond), firstCPU)

	// 2. stdout, stderr and exit code apart.
	r, err = run(ctx, c, &agentv1.StartRequest{Command: "echo out; echo err >&2; exit 3"})
	if err != nil || r.stdout != "out\n" || r.stderr != "err\n" || r.st.ExitCode != 3 {
		t.Fatalf("stdout/stderr/exit: %+v %v", r, err)
	}

	// 2a. The same through the CLI: `host-supervisor exec --agent hvsock://...`
	// streams output and exits with the remote code.
	cmd := exec.CommandContext(ctx, a.cli, "exec", "--agent", v.AgentAddr(), "--", "uname -m; echo oops >&2; exit 7")
	var cout, cerr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &cout, &cerr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 || cout.String() != "aarch64\n" || cerr.String() != "oops\n" {
		t.Fatalf("host-supervisor exec: %v, stdout %q, stderr %q", err, cout.String(), cerr.String())
	}

	// 2b. A pty exec (devpts mounted by imageinit): stdout is the terminal.
	r, err = run(ctx, c, &agentv1.StartRequest{Command: "tty; stty size", Tty: true, Rows: 33, Cols: 101})
	if err != nil || !strings.HasPrefix(r.stdout, "/dev/pts/") || !strings.Contains(r.stdout, "33 101") {
		t.Fatalf("tty exec: %+v %v", r, err)
	}

	// 3. A timeout kills the command.
	t0 := time.Now()
	r, err = run(ctx, c, &agentv1.StartRequest{Command: "echo started; sleep 30", TimeoutMs: 500, KillGraceMs: 200})
	if err != nil || !r.st.TimedOut || r.st.State != agentv1.ExecState_EXEC_STATE_TIMED_OUT || r.stdout != "started\n" {
		t.Fatalf("timeout: %+v %v", r, err)
	}
	if d := time.Since(t0); d > 15*time.Second {
		t.Errorf("timeout of 500ms took %v", d)
	}

	// 4. A background server (busybox httpd) keeps running while other
	// execs talk to it.
	if _, err := c.Start(ctx, &agentv1.StartRequest{Id: "httpd", Command: "mkdir -p /srv && echo hello-from-guest > /srv/index.html && exec httpd -f -p 127.0.0.1:8080 -h /srv"}); err != nil {
		t.Fatal(err)
	}
	wl, err := waitListener(ctx, v.AgentAddr(), &agentv1.WaitListenerRequest{Port: 8080,
		Protocol: agentv1.ListenerProtocol_LISTENER_PROTOCOL_HTTP, TimeoutMs: 20000})
	if err != nil {
		t.Fatalf("wait-listener for httpd on 8080: %v", err)
	}
	t.Logf("wait-listener: %s ready after %v (%s, %q)", wl.BindAddress, time.Duration(wl.ElapsedNs).Round(time.Millisecond), wl.Source, wl.Banner)
	if !strings.HasPrefix(wl.Banner, "HTTP/") {
		t.Errorf("wait-listener http banner %q", wl.Banner)
	}
	r, err = run(ctx, c, &agentv1.StartRequest{Command: "wget -q -O - http://127.0.0.1:8080/index.html"})
	if err != nil || r.stdout != "hello-from-guest\n" {
		t.Fatalf("httpd in the guest: %+v %v", r, err)
	}
	if st, err := c.Get(ctx, "httpd"); err != nil || st.State != agentv1.ExecState_EXEC_STATE_RUNNING {
		t.Fatalf("background httpd: %v %v", st, err)
	}
	// 5a. Files: 16 MiB written and read back through the Files service,
	// with the sha256 checked on the host, in the guest, and after the read.
	data := make([]byte, 16<<20)
	rand.NewChaCha8([32]byte{'s', 'a', 'i', 'l'}).Read(data)
	sum := sha256.Sum256(data)
	mode := uint32(0o600)
	t0 = time.Now()
	fi, err := c.WriteFile(ctx, "/tmp/e2e/big.bin", bytes.NewReader(data), agentclient.WriteOptions{Mode: &mode})
	if err != nil || fi.Size != uint64(len(data)) || fi.Mode != 0o600 {
		t.Fatalf("write 16 MiB: %v %v", fi, err)
	}
	wrote := time.Since(t0)
	r, err = run(ctx, c, &agentv1.StartRequest{Command: "sha256sum /tmp/e2e/big.bin | cut -d' ' -f1"})
	if err != nil || strings.TrimSpace(r.stdout) != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256 in the guest: %q %v; want %x", r.stdout, err, sum)
	}
	var back bytes.Buffer
	t0 = time.Now()
	if _, n, err := c.ReadFile(ctx, "/tmp/e2e/big.bin", &back, agentclient.ReadOptions{}); err != nil || n != uint64(len(data)) {
		t.Fatalf("read 16 MiB: %d %v", n, err)
	}
	if sha256.Sum256(back.Bytes()) != sum {
		t.Fatal("16 MiB read back differs")
	}
	t.Logf("files: 16 MiB written in %v, read back in %v, sha256 %x matches", wrote.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), sum[:8])

	// 5. A larger output stream: 4 MiB through the vsock path, byte-exact.
	r, err = run(ctx, c, &agentv1.StartRequest{Command: "head -c 4194304 /dev/zero | tr '\\0' x"})
	if err != nil || len(r.stdout) != 4<<20 || strings.Trim(r.stdout, "x") != "" {
		t.Fatalf("4 MiB output: %d bytes, %v", len(r.stdout), err)
	}

	// 6. Pause and resume the VM through QMP; the agent answers after cont.
	if err := v.QMP().Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := v.QMP().QueryStatus(ctx); err != nil || st.Status != "paused" {
		t.Fatalf("query-status after stop: %+v %v", st, err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := v.QMP().Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := run(ctx, c, &agentv1.StartRequest{Command: "echo resumed"}); err != nil || r.stdout != "resumed\n" {
		t.Fatalf("exec after cont: %+v %v", r, err)
	}

	// 7. kill -9 the agent inside the guest: imageinit restarts it and the
	// client reconnects by itself.
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Start(ctx, &agentv1.StartRequest{Id: "kill-agent", Command: fmt.Sprintf("kill -9 %d", info.Pid)})
	var info2 *agentv1.InfoResponse
	killed := time.Now()
	for {
		info2, err = c.Info(ctx)
		if err == nil && info2.Pid != info.Pid {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("agent not back after kill -9: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("agent pid %d killed, pid %d answering after %v", info.Pid, info2.Pid, time.Since(killed).Round(time.Millisecond))
	if info2.BootId != info.BootId {
		t.Errorf("boot id changed across an agent restart: %s -> %s", info.BootId, info2.BootId)
	}
	r, err = run(ctx, c, &agentv1.StartRequest{Command: "echo after-restart; uname -m"})
	if err != nil || r.stdout != "after-restart\naarch64\n" {
		t.Fatalf("exec after agent restart: %+v %v", r, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "console.log")); !strings.Contains(string(b), "agent exited") {
		t.Errorf("imageinit did not log the agent's death")
	}

	// 8. Clean power-off: imageinit stops everything (httpd included),
	// unmounts and powers off; QEMU exits by itself.
	clean, err := v.Shutdown(ctx, 20*time.Second)
	if !clean || err != nil {
		t.Fatalf("shutdown: clean=%v %v", clean, err)
	}
	if err := v.Wait(ctx); err != nil {
		t.Errorf("QEMU exit status: %v", err)
	}
	if err := syscall.Kill(qemuPID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("QEMU pid %d still exists after power-off (kill 0: %v)", qemuPID, err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
	if !strings.Contains(string(b), "reboot: Power down") {
		t.Errorf("console lacks the kernel's power-down line")
	}
	t.Logf("whole test %v", time.Since(testStart).Round(time.Millisecond))
}
