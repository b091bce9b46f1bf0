package repl_test

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/sailbox/sailbox/internal/agenttest"
	"github.com/sailbox/sailbox/internal/testcap"
)

// The agent dies with host-supervisor local, even when it is SIGKILLed
// (parent death signal; then the PID namespace goes with its init).
func TestLocalAgentDiesWithParent(t *testing.T) {
	testcap.Root(t)
	_, env := stateEnv(t)
	tm := startTerm(t, env, "local")
	dir := filepath.Dir(strings.TrimPrefix(tm.expect(`agent (unix://\S+)\)`)[1], "unix://"))
	t.Cleanup(func() { os.RemoveAll(dir) }) // a SIGKILLed session cannot remove it
	tm.expect(`local> *$`)
	tm.send("exec -b --id orphan-to-be sleep 1001\r")
	tm.expect(`orphan-to-be\n`)
	var agentPid int
	var sleeper *proc
	waitFor(t, "agent and sleep 1001 run", func() bool {
		for _, p := range descendants(t, tm.cmd.Process.Pid) {
			if strings.Contains(p.cmdline, "--listen unix://") {
				agentPid = p.pid
			}
		}
		sleeper = findProc(descendants(t, tm.cmd.Process.Pid), "sleep 1001")
		return agentPid != 0 && sleeper != nil
	})
	tm.cmd.Process.Kill()
	tm.wait()
	waitFor(t, "the agent and its exec are gone after SIGKILL of host-supervisor", func() bool {
		return !alive(agentPid) && !alive(sleeper.pid)
	})
}

// When the agent dies, the REPL says so and ends with 125.
func TestLocalAgentExitEndsSession(t *testing.T) {
	testcap.Root(t)
	_, env := stateEnv(t)
	tm := startTerm(t, env, "local")
	tm.expect(`local> *$`)
	var agentPid int
	waitFor(t, "agent runs", func() bool {
		for _, p := range descendants(t, tm.cmd.Process.Pid) {
			if strings.Contains(p.cmdline, "--listen unix://") {
				agentPid = p.pid
			}
		}
		return agentPid != 0
	})
	syscall.Kill(agentPid, syscall.SIGKILL)
	tm.expect(`error: Unavailable: the agent has exited`)
	if code := tm.wait(); code != 125 {
		t.Errorf("exit status %d, want 125", code)
	}
}

// Not root: the agent runs as a plain child, says so, and exit still takes
// its execs with it.
func TestLocalPlainAsNonRoot(t *testing.T) {
	testcap.Root(t) // to become another user
	// Binaries where user nobody can run them.
	dir, err := os.MkdirTemp("", "sailbox-plain-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	for _, b := range []string{"host-supervisor", "guest-agent"} {
		copyFile(t, filepath.Join(agenttest.Binaries(t), b), filepath.Join(dir, b))
	}
	cmd := exec.Command(filepath.Join(dir, "host-supervisor"), "local")
	cmd.Env = append(agenttest.Env(), "HOME="+dir, "XDG_RUNTIME_DIR=")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Stdin = strings.NewReader("exec id -u; hostname\nexec -b --id bg sleep 1002\nps\n")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("local as nobody: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	host, _ := os.Hostname()
	if !strings.HasPrefix(out.String(), "65534\n"+host+"\nbg\n") {
		t.Errorf("stdout %q", out.String())
	}
	if !strings.Contains(errb.String(), "note: not isolated (needs root): the agent runs as a plain child process") {
		t.Errorf("stderr does not say it is not isolated: %q", errb.String())
	}
	m := regexp.MustCompile(`(?m)^bg\s+running\s+(\d+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no pid for bg in ps:\n%s", out.String())
	}
	pid, _ := strconv.Atoi(m[1])
	if alive(pid) {
		t.Errorf("sleep 1002 (pid %d) outlived host-supervisor local", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// local --state-dir journals execs through the durable supervisor: records
// and output outlive the session; an exec running when it ended is
// reported lost in the next one, never run again.
func TestLocalJournalAcrossSessions(t *testing.T) {
	testcap.Root(t)
	state := filepath.Join(t.TempDir(), "state")
	run := func(script string) (string, string, int) {
		cmd := exec.Command(agenttest.Supervisor(t), "local", "--state-dir", state)
		cmd.Env = agenttest.Env()
		cmd.Stdin = strings.NewReader(script)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	marker := filepath.Join(state, "ran-twice")
	out, errOut, code := run("exec --id first echo journal-one\nexec -b --id unfinished sh -c 'echo run >> " + marker + "; sleep 100'\n" +
		"exec until [ -s " + marker + " ]; do sleep 0.01; done\n")
	if code != 0 || out != "journal-one\nunfinished\n" || !strings.Contains(errOut, "journal: execs are journalled in "+state) {
		t.Fatalf("session 1: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run("logs first\nwait unfinished\n")
	if code != 125 || out != "journal-one\n" || !strings.Contains(errOut, "error: Aborted: exec unfinished was lost: ") {
		t.Errorf("session 2: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, _, code = run("ps\n")
	if code != 0 || !regexp.MustCompile(`(?m)^first\s+exited\s+\d+\s+0\s`).MatchString(out) || !regexp.MustCompile(`(?m)^unfinished\s+lost\s`).MatchString(out) {
		t.Errorf("session 3 ps: exit %d:\n%s", code, out)
	}
	if b, _ := os.ReadFile(marker); string(b) != "run\n" {
		t.Errorf("the unfinished exec ran %d times, want once", strings.Count(string(b), "run"))
	}
}

// SIGTERM to host-supervisor local: the agent and the private dir go too.
func TestLocalSIGTERMCleansUp(t *testing.T) {
	testcap.Root(t)
	_, env := stateEnv(t)
	tm := startTerm(t, env, "local")
	dir := filepath.Dir(strings.TrimPrefix(tm.expect(`agent (unix://\S+)\)`)[1], "unix://"))
	tm.expect(`local> *$`)
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("private dir: %v", err)
	}
	var agentPid int
	waitFor(t, "agent runs", func() bool {
		for _, p := range descendants(t, tm.cmd.Process.Pid) {
			if strings.Contains(p.cmdline, "--listen unix://") {
				agentPid = p.pid
			}
		}
		return agentPid != 0
	})
	tm.cmd.Process.Signal(syscall.SIGTERM)
	if code := tm.wait(); code != 128+15 {
		t.Errorf("exit status %d, want 143", code)
	}
	if alive(agentPid) {
		t.Errorf("agent %d alive after SIGTERM of host-supervisor", agentPid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("private dir %s left behind (%v)", dir, err)
	}
}
