package supervisor

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/agenttest"
)

// wait-listener and repl with --supervisor/--sandbox: the wait goes
// through the daemon's WaitListener pass-through (it keeps answering across
// a daemon restart); the REPL runs on the sandbox's registered agent.
func TestWaitListenerAndReplThroughSupervisor(t *testing.T) {
	a := agenttest.Start(t)
	d := startDaemon(t)
	if r := runCLI(t, nil, "sandbox", "add", "--supervisor", d.API, "--id", "sb", "--agent", a.Addr); r.code != 0 {
		t.Fatalf("sandbox add: %+v", r)
	}
	sup := []string{"--supervisor", d.API, "--sandbox", "sb"}

	// An SSH-like server (banner first) that starts listening only after
	// the wait began. The agent is a local process: its ports are ours.
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := probe.Addr().(*net.TCPAddr).Port
	probe.Close()
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Errorf("listen on %d: %v", port, err)
			return
		}
		t.Cleanup(func() { ln.Close() })
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-sailboxtest\r\n"))
			c.Close()
		}
	}()
	r := runCLI(t, nil, append([]string{"wait-listener", "--port", fmt.Sprint(port), "--protocol", "ssh", "--timeout", "20s"}, sup...)...)
	want := fmt.Sprintf(`ready port=%d protocol=ssh bind=127.0.0.1:%d banner="SSH-2.0-sailboxtest" elapsed=`, port, port)
	if r.code != 0 || !strings.HasPrefix(r.stdout, want) {
		t.Fatalf("wait-listener ssh via the supervisor: %+v; want %q...", r, want)
	}

	// Nothing listening: the agent's DeadlineExceeded, through the daemon.
	idle, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	idlePort := idle.Addr().(*net.TCPAddr).Port
	idle.Close()
	r = runCLI(t, nil, append([]string{"wait-listener", "--port", fmt.Sprint(idlePort), "--timeout", "300ms"}, sup...)...)
	if r.code != 125 || r.stdout != "" || !strings.HasPrefix(r.stderr, "error: DeadlineExceeded: ") ||
		!strings.Contains(r.stderr, fmt.Sprintf("nothing listening on port %d", idlePort)) {
		t.Fatalf("wait-listener on an idle port via the supervisor: %+v", r)
	}

	// The wait goes through the daemon: with the daemon down it does not
	// answer; once the daemon is back it does (the CLI redials it).
	d.KillHard()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cmd := exec.Command(agenttest.Supervisor(t), append([]string{"wait-listener", "--port", fmt.Sprint(ln.Addr().(*net.TCPAddr).Port), "--timeout", "20s"}, sup...)...)
	cmd.Env = env()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("wait-listener ended with the daemon down: %v, stdout %q, stderr %q", err, out.String(), errb.String())
	case <-time.After(300 * time.Millisecond):
	}
	d.Start()
	if err := <-done; err != nil || !strings.HasPrefix(out.String(), "ready port=") {
		t.Fatalf("wait-listener across a daemon restart: %v, stdout %q, stderr %q", err, out.String(), errb.String())
	}

	// Unknown sandbox, no sandbox: clear errors.
	r = runCLI(t, nil, "wait-listener", "--supervisor", d.API, "--sandbox", "nope", "--port", "80", "--timeout", "1s")
	if r.code != 125 || r.stderr != "error: NotFound: sandbox nope not found\n" {
		t.Fatalf("wait-listener on an unknown sandbox: %+v", r)
	}
	r = runCLI(t, nil, "wait-listener", "--supervisor", d.API, "--port", "80")
	if r.code != 125 || !strings.HasPrefix(r.stderr, "error: InvalidArgument: --supervisor needs --sandbox") {
		t.Fatalf("wait-listener without a sandbox: %+v", r)
	}

	// The REPL (stdin not a terminal: runs the lines, stops at the first failure).
	repl := exec.Command(agenttest.Supervisor(t), append([]string{"repl", "--history", "-"}, sup...)...)
	repl.Env = env()
	repl.Stdin = strings.NewReader("exec echo $((6*7))-from-repl\nexec exit 3\nexec echo not-reached\n")
	var rOut, rErr bytes.Buffer
	repl.Stdout, repl.Stderr = &rOut, &rErr
	err = repl.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || rOut.String() != "42-from-repl\n" || rErr.String() != "[exit status 3]\n" {
		t.Fatalf("repl via the supervisor: %v\nstdout %q\nstderr %q", err, rOut.String(), rErr.String())
	}
	r = runCLI(t, nil, "repl", "--supervisor", d.API, "--sandbox", "nope")
	if r.code != 125 || r.stderr != "error: NotFound: sandbox nope not found\n" {
		t.Fatalf("repl on an unknown sandbox: %+v", r)
	}
}
