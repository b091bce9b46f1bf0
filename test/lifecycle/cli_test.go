package lifecycletest

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/agenttest"
	"github.com/sailbox/sailbox/internal/testcap"
)

// emptyQEMU runs an arm64 machine without a kernel (the vCPU spins on
// zeros): a real QMP monitor for the CLI's VMM verbs.
func emptyQEMU(t *testing.T) string {
	t.Helper()
	bin := testcap.Command(t, "qemu-system-aarch64")
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(bin, "-M", "virt", "-cpu", "cortex-a72", "-accel", "tcg", "-m", "64",
		"-nodefaults", "-display", "none", "-qmp", "unix:"+sock+",server=on,wait=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return sock
}

type cliResult struct {
	out, err string
	code     int
}

func cli(t *testing.T, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(agenttest.Supervisor(t), args...)
	cmd.Env = agenttest.Env()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return cliResult{o.String(), e.String(), code}
}

func (r cliResult) want(t *testing.T, code int, outHas ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", r.code, code, r.out, r.err)
	}
	for _, s := range outHas {
		if !strings.Contains(r.out+r.err, s) {
			t.Fatalf("output lacks %q\nstdout: %s\nstderr: %s", s, r.out, r.err)
		}
	}
}

// The lifecycle verbs against a real agent and a real QEMU monitor.
func TestCLILifecycleVerbs(t *testing.T) {
	a := startAgent(t)
	qmp := emptyQEMU(t)

	cli(t, "freeze", "--agent", a.addr, "--watchdog", "30s").want(t, 0, "frozen: (none)", "watchdog thaws at")
	cli(t, "freeze", "--agent", a.addr).want(t, 0, "already frozen")
	cli(t, "thaw", "--agent", a.addr).want(t, 0, "thawed:")
	cli(t, "thaw", "--agent", a.addr).want(t, 0, "was not frozen")

	a.ev.reset()
	cli(t, "checkpoint", "--agent", a.addr, "--qmp", qmp, "--generation", "4").want(t, 0,
		"checkpoint generation 5", "no snapshot file: the VMM cannot snapshot")
	if got := a.ev.list(); strings.Join(got, " ") != "agent-freeze agent-thaw" {
		t.Fatalf("agent hooks during the checkpoint: %q", got)
	}

	cli(t, "pause", "--qmp", qmp).want(t, 0, "pause: done")
	cli(t, "resume", "--qmp", qmp, "--agent", a.addr, "--generation", "5").want(t, 0, "vm resumed", "guest: generation 5 (was 0)", "crng reseeded true")
	// An older generation is refused by the guest.
	cli(t, "resume", "--agent", a.addr, "--generation", "3").want(t, 125, "error: FailedPrecondition: ", "older than the applied generation 5")

	// QEMU with vhost-user-vsock cannot snapshot: restore and fork say so.
	cli(t, "restore", "--agent", a.addr, "--qmp", qmp, "--path", "/nonexistent/snap").want(t, 125,
		"error: Unimplemented: vmm qemu", "vhost-user-vsock")
	cli(t, "fork", "--agent", a.addr, "--qmp", qmp, "--path", "/nonexistent/snap", "--hostname", "f1").want(t, 125,
		"error: Unimplemented: vmm qemu")
	cli(t, "sleep", "--qmp", qmp).want(t, 125, "error: FailedPrecondition: sleep")
	cli(t, "checkpoint", "--agent", a.addr).want(t, 125, "error: InvalidArgument: no VMM")
	cli(t, "restore", "--agent", a.addr, "--qmp", qmp).want(t, 125, "error: InvalidArgument: restore: give --path")
	cli(t, "pause", "--qmp", filepath.Join(t.TempDir(), "none.sock"), "--timeout", "1s").want(t, 125, "error: Unavailable: vmm qemu")
}

// startServe runs the durable daemon (`host-supervisor serve`) and returns
// its control API address.
func startServe(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	api := "unix://" + filepath.Join(dir, "api.sock")
	cmd := exec.Command(agenttest.Supervisor(t), "serve", "--state-dir", filepath.Join(dir, "state"), "--api", api)
	cmd.Env = agenttest.Env()
	var logb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logb, &logb
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("daemon log:\n%s", logb.String())
		}
	})
	for i := 0; ; i++ {
		if r := cli(t, "sandbox", "list", "--supervisor", api); r.code == 0 {
			return api
		} else if i > 200 {
			t.Fatalf("daemon not answering: %+v", r)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Through the daemon: the checkpoint's generation is journalled by the
// daemon, and resume sends the journalled generation.
func TestCLILifecycleThroughDaemon(t *testing.T) {
	a := startAgent(t)
	qmp := emptyQEMU(t)
	api := startServe(t)
	cli(t, "sandbox", "add", "--supervisor", api, "--id", "sb", "--agent", a.addr).want(t, 0)
	via := []string{"--supervisor", api, "--sandbox", "sb"}

	cli(t, append([]string{"checkpoint", "--qmp", qmp}, via...)...).want(t, 0, "checkpoint generation 1")
	cli(t, append([]string{"checkpoint", "--qmp", qmp}, via...)...).want(t, 0, "checkpoint generation 2")
	list := cli(t, "sandbox", "list", "--supervisor", api)
	list.want(t, 0)
	if f := strings.Fields(lastLine(list.out)); len(f) < 3 || f[0] != "sb" || f[2] != "2" {
		t.Fatalf("sandbox list after two checkpoints:\n%s", list.out)
	}
	cli(t, append([]string{"freeze"}, via...)...).want(t, 0, "frozen:")
	cli(t, append([]string{"thaw"}, via...)...).want(t, 0, "thawed:")
	cli(t, append([]string{"resume", "--qmp", qmp}, via...)...).want(t, 0, "vm resumed", "guest: generation 2 (was 0)")
	cli(t, append([]string{"restore", "--qmp", qmp, "--path", "/x"}, via...)...).want(t, 125, "error: Unimplemented: vmm qemu")
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// vmState is the VM column of `sandbox list` for sandbox id.
func vmState(t *testing.T, api, id string) string {
	t.Helper()
	r := cli(t, "sandbox", "list", "--supervisor", api)
	r.want(t, 0)
	for _, l := range strings.Split(r.out, "\n") {
		if f := strings.Fields(l); len(f) >= 5 && f[0] == id {
			return f[4]
		}
	}
	t.Fatalf("sandbox %s not listed:\n%s", id, r.out)
	return ""
}

// The daemon holds the VM's monitor (`sandbox add --qmp`): the lifecycle
// verbs with --supervisor/--sandbox and no --qmp are its RPCs; sleep works
// and the next exec or wait-listener wakes the VM; pause refuses execs
// until resume.
func TestCLILifecycleDaemonHoldsVMM(t *testing.T) {
	a := startAgent(t)
	qmp := emptyQEMU(t)
	api := startServe(t)
	cli(t, "sandbox", "add", "--supervisor", api, "--id", "sb", "--agent", a.addr, "--qmp", qmp).want(t, 0, "running")
	cli(t, "sandbox", "add", "--supervisor", api, "--id", "plain", "--agent", a.addr).want(t, 0)
	cli(t, "sandbox", "add", "--supervisor", api, "--id", "bad", "--agent", a.addr, "--qmp", filepath.Join(t.TempDir(), "none.sock")).want(t, 125,
		"error: FailedPrecondition: sandbox bad: vmm at")
	via := []string{"--supervisor", api, "--sandbox", "sb"}
	// The target right after the verb (exec's command follows --).
	run := func(verb string, args ...string) cliResult {
		return cli(t, append(append([]string{verb}, via...), args...)...)
	}

	run("checkpoint").want(t, 0, "checkpoint generation 1", "no snapshot file: the VMM cannot snapshot")
	run("checkpoint").want(t, 0, "checkpoint generation 2")

	run("sleep").want(t, 0, "sleep: done (sandbox sb asleep)")
	if s := vmState(t, api, "sb"); s != "asleep" {
		t.Fatalf("VM %q after sleep", s)
	}
	r := run("exec", "--", "echo woke")
	if r.code != 0 || r.out != "woke\n" {
		t.Fatalf("exec on a sleeping sandbox: %+v", r)
	}
	if s := vmState(t, api, "sb"); s != "running" {
		t.Fatalf("VM %q after an exec woke it", s)
	}
	// wait-listener goes through the daemon, which wakes the VM.
	run("sleep").want(t, 0, "asleep")
	run("wait-listener", "--port", "1", "--timeout", "200ms").want(t, 125, "error: DeadlineExceeded: ")
	if s := vmState(t, api, "sb"); s != "running" {
		t.Fatalf("VM %q after wait-listener", s)
	}

	run("pause").want(t, 0, "pause: done (sandbox sb paused)")
	run("exec", "--", "true").want(t, 125, "error: FailedPrecondition: sandbox sb: wake: the sandbox is paused")
	run("sleep").want(t, 125, "error: FailedPrecondition: sandbox sb: sleep: the sandbox is paused")
	run("resume").want(t, 0, "vm resumed (was paused)", "guest: generation 2")
	run("restore", "--path", "/x").want(t, 125, "error: Unimplemented: vmm qemu")
	run("fork", "--path", "/x", "--hostname", "f").want(t, 125, "error: Unimplemented: vmm qemu")

	// A sandbox without a VMM: the verbs say what is missing.
	cli(t, "sleep", "--supervisor", api, "--sandbox", "plain").want(t, 125, "error: FailedPrecondition: sandbox plain: no VMM attached")
	cli(t, "sleep", "--supervisor", api).want(t, 125, "error: InvalidArgument: --supervisor needs --sandbox")
	if s := vmState(t, api, "plain"); s != "-" {
		t.Fatalf("VM column of a sandbox without a VMM: %q", s)
	}
}
