package repl_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/sailbox/sailbox/internal/agenttest"
	"github.com/sailbox/sailbox/internal/testcap"
)

// repl --agent in a pty: commands, completion of commands and exec ids,
// Ctrl-C during a foreground exec, Ctrl-D.
func TestReplInPty(t *testing.T) {
	a := agenttest.Start(t)
	_, env := stateEnv(t)
	tm := startTerm(t, env, "repl", "--agent", a.Addr)
	tm.expect(`Type help; Ctrl-D leaves\.`)
	tm.expect(`sailbox> *$`)

	// Output is the command's, not the echo of what was typed.
	tm.send("exec echo $((6*7))-answer\r")
	tm.expect(`\n42-answer\n`)
	tm.expect(`sailbox> *$`)

	// A one-line error; the session goes on.
	tm.send("wait nope\r")
	tm.expect(`error: NotFound: [^\n]*nope[^\n]*\nsailbox> *$`)

	// Completion: a command name, then an exec id from List.
	tm.send("he\texec\r")
	tm.expect(`usage:   exec \[-b\]`)
	tm.send("exec -b --id tabjob sleep 60\r")
	tm.expect(`tabjob\n`)
	tm.send("kill tabj\t\r")
	tm.expect(`sailbox> *$`)
	tm.send("wait tabj\t\r")
	tm.expect(`\[killed by signal 15 \(TERM\)\]`)

	// Ctrl-C interrupts the remote command, not the REPL.
	tm.send("exec sleep 30; echo not-interrupted\r")
	var sleeper *proc
	waitFor(t, "sleep 30 runs under the agent", func() bool {
		sleeper = findProc(descendants(t, a.Cmd.Process.Pid), "sleep 30")
		return sleeper != nil
	})
	tm.send("\x03")
	tm.expect(`\[killed by signal 2 \(INT\)\]\nsailbox> *$`)
	if alive(sleeper.pid) {
		t.Errorf("remote sleep (pid %d) still running after Ctrl-C", sleeper.pid)
	}
	if strings.Contains(tm.screen(), "\nnot-interrupted") {
		t.Error("the shell went on after Ctrl-C")
	}
	// A command that ignores SIGINT: the third Ctrl-C kills it and gives
	// the prompt back.
	tm.send("exec trap '' INT; sleep 31\r")
	waitFor(t, "sleep 31 runs under the agent", func() bool {
		sleeper = findProc(descendants(t, a.Cmd.Process.Pid), "sleep 31")
		return sleeper != nil
	})
	for range 3 {
		// Paced like a person: signals pending at once merge into one.
		tm.send("\x03")
		time.Sleep(300 * time.Millisecond)
	}
	tm.expect(`(error: Canceled: interrupted|\[killed by signal 9 \(KILL\)\])\nsailbox> *$`)
	waitFor(t, "sleep 31 is killed", func() bool { return !alive(sleeper.pid) })

	// Ctrl-C during a command without a remote process (wait) cancels it.
	tm.send("exec -b --id long sleep 60\r")
	tm.expect(`long\n`)
	tm.send("wait long\r")
	tm.expect(`wait long\n`)
	tm.send("\x03")
	tm.expect(`error: Canceled: interrupted\nsailbox> *$`)
	tm.send("kill -s KILL long\r")
	tm.expect(`sailbox> *$`)

	// Ctrl-D leaves with status 0.
	tm.send("\x04")
	if code := tm.wait(); code != 0 {
		t.Errorf("Ctrl-D: exit status %d", code)
	}
}

// History is kept in $XDG_STATE_HOME/sailbox/history (else
// ~/.local/state/sailbox/history) and recalled after a restart.
func TestHistoryAcrossRestarts(t *testing.T) {
	a := agenttest.Start(t)
	dir, env := stateEnv(t)
	tm := startTerm(t, env, "repl", "--agent", a.Addr)
	tm.expect(`sailbox> *$`)
	tm.send("exec echo $((40+2))-from-history\r")
	tm.expect(`\n42-from-history\n`)
	tm.send("exit\r")
	if code := tm.wait(); code != 0 {
		t.Fatalf("exit: status %d", code)
	}
	hist := filepath.Join(dir, "state", "sailbox", "history")
	b, err := os.ReadFile(hist)
	if err != nil || !strings.Contains(string(b), "exec echo $((40+2))-from-history\n") {
		t.Fatalf("history file %s: %q, %v", hist, b, err)
	}

	tm = startTerm(t, env, "repl", "--agent", a.Addr)
	tm.expect(`sailbox> *$`)
	tm.send("\x1b[A\x1b[A\r") // up twice: past "exit" to the exec
	tm.expect(`\n42-from-history\n`)
	tm.send("exit\r")
	tm.wait()

	// Without XDG_STATE_HOME: under HOME.
	home := t.TempDir()
	tm = startTerm(t, []string{"HOME=" + home, "XDG_STATE_HOME="}, "repl", "--agent", a.Addr)
	tm.expect(`sailbox> *$`)
	tm.send("info\r")
	tm.expect(`boot id`)
	tm.send("exit\r")
	tm.wait()
	if b, err := os.ReadFile(filepath.Join(home, ".local", "state", "sailbox", "history")); err != nil || !strings.Contains(string(b), "info\n") {
		t.Errorf("history under HOME: %q, %v", b, err)
	}
}

// local as root: the agent is PID 1 of its own namespaces; exec, shell with
// a resize, path completion; exit leaves no process behind.
func TestLocalInPty(t *testing.T) {
	testcap.Root(t)
	_, env := stateEnv(t)
	tm := startTerm(t, append(env, "SHELL=/bin/sh"), "local")
	tm.expect(`agent isolated in new mount, PID, UTS and IPC namespaces`)
	tm.expect(`local> *$`)
	var agentPid int
	waitFor(t, "the agent is a child of host-supervisor local", func() bool {
		for _, p := range descendants(t, tm.cmd.Process.Pid) {
			if strings.Contains(p.cmdline, "--listen unix://") {
				agentPid = p.pid
				return true
			}
		}
		return false
	})

	tm.send("exec uname -a\r")
	tm.expect(`\nLinux sailbox-local `)
	tm.send("info\r")
	tm.expect(`hostname\s+sailbox-local\n`)
	tm.expect(`agent pid\s+1\n`)
	tm.expect(`frozen\s+no`)
	// Its own /proc: only the sandbox's processes.
	tm.send("exec ls /proc | grep -c '^[0-9]'\r")
	if n := tm.expect(`\n(\d+)\n`)[1]; n != "3" && n != "4" {
		t.Errorf("the sandbox sees %s processes; want its own few (agent, sh, ls, grep)", n)
	}
	// A private /tmp.
	marker := filepath.Join(os.TempDir(), "sailbox-repl-test-marker")
	os.WriteFile(marker, nil, 0o644)
	defer os.Remove(marker)
	tm.send("exec ls " + marker + " 2>&1 | grep -c 'No such'\r")
	tm.expect(`\n1\n`)

	// Remote path completion through the agent.
	tm.send("exec cat /proc/sys/kernel/hostn\t\r")
	tm.expect(`hostname \n(?:[^\n]*\n)?sailbox-local\n`)

	// freeze is confined to the scratch root: nothing of the host freezes.
	tm.send("freeze --watchdog 10s\r")
	tm.expect(`frozen: \(no filesystems\)`)
	tm.send("thaw\r")
	tm.expect(`thawed after`)

	// shell: a pty of the initial size, then of the new size after a resize.
	tm.send("shell /bin/sh\r")
	tm.expect(`Ctrl-\] leaves\]`)
	tm.send("stty size\r")
	tm.expect(`40 120\n`) // typed ahead, the echo may come before the shell's prompt
	if err := pty.Setsize(tm.pty, &pty.Winsize{Rows: 33, Cols: 101}); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(tm.cmd.Process.Pid, syscall.SIGWINCH)
	// The resize reaches the remote pty asynchronously: ask until it shows.
	last := time.Time{}
	waitFor(t, "stty size shows 33 101 after the resize", func() bool {
		if time.Since(last) > 300*time.Millisecond {
			tm.send("stty size\r")
			last = time.Now()
		}
		return strings.Contains(tm.screen()[tm.mark:], "33 101\n")
	})
	tm.send("\x1d")
	tm.expect(`\[left shell e[0-9a-f]+\]\nlocal> *$`)

	// exit takes everything with it.
	tm.send("exec -b sleep 1000\r")
	tm.expect(`e[0-9a-f]+\n`)
	var sleeper *proc
	waitFor(t, "sleep 1000 runs", func() bool {
		sleeper = findProc(descendants(t, agentPid), "sleep 1000")
		return sleeper != nil
	})
	tm.send("exit\r")
	if code := tm.wait(); code != 0 {
		t.Errorf("exit: status %d", code)
	}
	for _, pid := range []int{agentPid, sleeper.pid} {
		if alive(pid) {
			t.Errorf("pid %d is still alive after exit", pid)
		}
	}
	for _, p := range procs(t) {
		if p.sid == agentPid {
			t.Errorf("left behind: pid %d %q (session of the agent)", p.pid, p.cmdline)
		}
	}
}

// Not a terminal: commands from stdin line by line; the first failure ends
// the run with its status.
func TestScriptOnStdin(t *testing.T) {
	a := agenttest.Start(t)
	run := func(args []string, script string) (string, string, int) {
		cmd := exec.Command(agenttest.Supervisor(t), args...)
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
	agent := []string{"repl", "--agent", a.Addr}
	out, errOut, code := run(agent, "exec echo one\nexec -b --id s1 echo two\nwait s1\nlogs s1\n")
	if code != 0 || out != "one\ns1\nexec s1: exit status 0\ntwo\n" || errOut != "" {
		t.Errorf("script: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run(agent, "exec echo before\nexec exit 4\nexec echo after\n")
	if code != 4 || out != "before\n" || errOut != "[exit status 4]\n" {
		t.Errorf("failing exec: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run(agent, "exec echo before\nnosuch command\nexec echo after\n")
	if code != 125 || out != "before\n" || !strings.HasPrefix(errOut, `error: InvalidArgument: unknown command "nosuch"`) {
		t.Errorf("unknown command: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	// An unreachable agent fails before reading anything.
	_, errOut, code = run([]string{"repl", "--agent", "unix://" + filepath.Join(t.TempDir(), "none.sock")}, "exec true\n")
	if code != 125 || !strings.HasPrefix(errOut, "error: Unavailable: ") {
		t.Errorf("no agent: exit %d, stderr %q", code, errOut)
	}

	if os.Geteuid() == 0 {
		out, errOut, code = run([]string{"local"}, "exec hostname\nexec false\nexec echo after\n")
		if code != 1 || out != "sailbox-local\n" || !strings.Contains(errOut, "[exit status 1]") {
			t.Errorf("local script: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
	}
}
