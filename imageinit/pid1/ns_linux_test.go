package pid1

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
	"golang.org/x/sys/unix"
)

// The namespace tests run imageinit as PID 1 of a new PID, mount, UTS, net
// and IPC namespace, chrooted into a prepared root, so nothing it mounts,
// names or kills is the host's. reboot(POWER_OFF) from the init of a
// non-initial PID namespace only ends that namespace (its parent sees
// SIGINT); the tests check exactly that.

const helperEnv = "PID1_NS_HELPER_ROOT"

func TestMain(m *testing.M) {
	if root := os.Getenv(helperEnv); root != "" {
		os.Exit(nsHelper(root))
	}
	os.Exit(m.Run())
}

// nsHelper runs as PID 1 of the new namespaces: it makes the mount tree
// private (so no mount reaches the host), enters root, and either execs the
// real imageinit (/init) or runs Run in-process with an injected poweroff.
func nsHelper(root string) int {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "helper: not PID 1; refusing")
		return 97
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintln(os.Stderr, "helper: make / private:", err)
		return 98
	}
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		fmt.Fprintln(os.Stderr, "helper: bind root:", err)
		return 98
	}
	if err := unix.Chroot(root); err != nil {
		fmt.Fprintln(os.Stderr, "helper: chroot:", err)
		return 98
	}
	os.Chdir("/")
	if os.Getenv("PID1_NS_MODE") == "inproc" {
		err := Run(Options{Cmdline: os.Getenv("SAILBOX_INIT_CMDLINE"), Poweroff: func() error {
			fmt.Println("injected poweroff")
			os.Exit(0)
			return nil
		}}, slogStderr())
		fmt.Fprintln(os.Stderr, "Run returned:", err)
		return 99
	}
	err := unix.Exec("/init", []string{"/init"}, os.Environ())
	fmt.Fprintln(os.Stderr, "helper: exec /init:", err)
	return 98
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func goBuild(t *testing.T, pkg, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// prepareRoot builds imageinit and the fake agent into a fresh root.
func prepareRoot(t *testing.T) string {
	root := t.TempDir()
	goBuild(t, "github.com/sailbox/sailbox/imageinit", filepath.Join(root, "init"))
	goBuild(t, "./testdata/fakeagent", filepath.Join(root, "usr/bin/guest-agent"))
	os.MkdirAll(filepath.Join(root, "etc/sailbox"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/sailbox/env"), []byte("SAILBOX_TEST_VAR=from-image\n"), 0o644)
	return root
}

// startNS starts the helper in new namespaces; it becomes imageinit.
func startNS(t *testing.T, root, mode string) (*exec.Cmd, *syncBuf, <-chan error) {
	testcap.Root(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+root, "PID1_NS_MODE="+mode,
		// No modules (never load into the host kernel), no vsock control port.
		"SAILBOX_INIT_CMDLINE=sailbox.modules= sailbox.control=0 sailbox.hostname=pid1test")
	out := &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWNET | syscall.CLONE_NEWIPC,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		testcap.Missing(t, "PID+mount namespaces: "+err.Error())
	}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() { done <- cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill() // SIGKILL of a PID namespace's init ends all of it
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
		if t.Failed() {
			t.Logf("imageinit output:\n%s", out.String())
		}
	})
	return cmd, out, done
}

// agentLog reads /run/agent.log inside the namespace through /proc/PID/root.
func agentLog(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/root/run/agent.log", pid))
	return string(b)
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// children lists the host pids of pid's children (forked by any of its
// threads), with their states.
func children(pid int) map[int]string {
	out := map[int]string{}
	var b []byte
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		c, _ := os.ReadFile(t)
		b = append(append(b, ' '), c...)
	}
	for _, f := range strings.Fields(string(b)) {
		c, _ := strconv.Atoi(f)
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c))
		// pid (comm) S ...: the state follows the last ')'.
		if i := bytes.LastIndexByte(st, ')'); i > 0 && i+2 < len(st) {
			out[c] = string(st[i+2])
		}
	}
	return out
}

func TestNamespaceBootRestartPoweroff(t *testing.T) {
	root := prepareRoot(t)
	cmd, out, done := startNS(t, root, "exec")
	pid := cmd.Process.Pid
	waitFor(t, "the ready marker", 20*time.Second, func() bool { return strings.Contains(out.String(), ReadyMarker) })
	waitFor(t, "the agent to start", 10*time.Second, func() bool { return strings.Contains(agentLog(pid), "orphan pid=") })
	first := agentLog(pid)
	for _, want := range []string{"ppid=1 ", "args=--listen,vsock://:10000", "hostname=pid1test", "lo=0x9", "env=from-image"} {
		if !strings.Contains(first, want) {
			t.Errorf("agent log lacks %q:\n%s", want, first)
		}
	}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp", "/sys/fs/cgroup"} {
		if !bytes.Contains(mi, []byte(" "+m+" ")) {
			t.Errorf("no mount at %s in the namespace:\n%s", m, mi)
		}
	}
	// The orphan exits after 200ms; PID 1 must reap it: soon the agent is
	// its only child, and no zombie is left.
	var kids map[int]string
	waitFor(t, "the orphan to be reaped", 10*time.Second, func() bool {
		kids = children(pid)
		return len(kids) == 1
	})
	for c, st := range kids {
		if st == "Z" {
			t.Errorf("zombie child %d of imageinit", c)
		}
	}
	// kill -9 the agent: imageinit restarts it after its backoff.
	for c := range kids {
		syscall.Kill(c, syscall.SIGKILL)
	}
	waitFor(t, "the agent to be restarted", 10*time.Second, func() bool {
		return strings.Count(agentLog(pid), "start pid=") == 2
	})
	if !strings.Contains(out.String(), "agent exited") || !strings.Contains(out.String(), "signal killed") {
		t.Errorf("imageinit did not log the agent's death:\n%s", out.String())
	}
	// SIGTERM: the agent gets SIGTERM, then the namespace's "power off".
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var werr error
	select {
	case werr = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("imageinit did not end after SIGTERM")
	}
	var ee *exec.ExitError
	if !errors.As(werr, &ee) {
		t.Fatalf("want imageinit ended by the kernel's pid-namespace reboot (SIGINT), got %v", werr)
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Fatalf("want SIGINT (LINUX_REBOOT_CMD_POWER_OFF in a PID namespace), got %v", ws)
	}
	o := out.String()
	if !strings.Contains(o, PoweroffMarker) {
		t.Errorf("no poweroff marker:\n%s", o)
	}
	// The one expected warning is the kill -9 above.
	if strings.Count(o, "level=WARN") != 1 || strings.Contains(o, "level=ERROR") {
		t.Errorf("imageinit warned:\n%s", o)
	}
	if !strings.Contains(o, `msg="agent stopped"`) {
		t.Errorf("the agent was not seen stopping on shutdown:\n%s", o)
	}
	// The agent's term line was written to /run, which is gone with the
	// namespace; the absence of a SIGKILL warning shows it left on SIGTERM.
	if strings.Contains(o, "sending SIGKILL") {
		t.Errorf("the agent needed SIGKILL:\n%s", o)
	}
}

// TestNamespaceInjectedPoweroff runs Run in-process as PID 1 with an
// injected poweroff and no agent: it boots, takes SIGTERM, unmounts and
// calls the injected function, which exits 0.
func TestNamespaceInjectedPoweroff(t *testing.T) {
	root := t.TempDir()
	cmd, out, done := startNS(t, root, "inproc")
	waitFor(t, "the ready marker", 20*time.Second, func() bool { return strings.Contains(out.String(), ReadyMarker) })
	// The default agent path does not exist in this root: the restart
	// backoff must keep PID 1 alive and retrying.
	waitFor(t, "two failed agent starts", 10*time.Second, func() bool { return strings.Count(out.String(), "start agent") >= 2 })
	syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("want exit 0 from the injected poweroff, got %v\n%s", err, out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no poweroff after SIGTERM")
	}
	if !strings.Contains(out.String(), "injected poweroff") || !strings.Contains(out.String(), PoweroffMarker) {
		t.Fatalf("output:\n%s", out.String())
	}
}

func TestRefusesWithoutPID1(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "imageinit")
	goBuild(t, "github.com/sailbox/sailbox/imageinit", bin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := exec.CommandContext(ctx, bin).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(b), "not PID 1") {
		t.Fatalf("want exit 2 and a refusal, got %v: %s", err, b)
	}
	if err := Run(Options{Poweroff: func() error { t.Fatal("poweroff called outside PID 1"); return nil }}, slogStderr()); err == nil {
		t.Fatal("Run outside PID 1: no error")
	}
}
