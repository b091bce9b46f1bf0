// Package agenttest builds the real guest-agent and host-supervisor binaries
// and runs them for tests: tests talk to a real agent process over a real
// unix socket, never to a mock.
package agenttest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Binaries builds guest-agent and host-supervisor once per test process and
// returns the directory holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "sailbox-bin-")
		if buildErr != nil {
			return
		}
		root := repoRoot()
		for _, cmd := range []string{"guest-agent", "host-supervisor"} {
			c := exec.Command("go", "build", "-o", filepath.Join(buildDir, cmd), "./"+cmd)
			c.Dir = root
			c.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := c.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", cmd, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// repoRoot finds the module root from this source file's location.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Agent is a running guest-agent process.
type Agent struct {
	Addr   string // unix:///...
	Socket string
	Cmd    *exec.Cmd
	Log    string // path of its stderr log
	bin    string
	args   []string
}

// Start runs a guest-agent on a fresh unix socket in a temp dir and waits
// until it answers. It is killed (with everything it started) at cleanup.
func Start(t testing.TB, extraArgs ...string) *Agent {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	a := &Agent{
		Addr: "unix://" + sock, Socket: sock, Log: filepath.Join(dir, "agent.log"),
		bin:  filepath.Join(Binaries(t), "guest-agent"),
		args: append([]string{"--listen", "unix://" + sock, "--state-dir", filepath.Join(dir, "state")}, extraArgs...),
	}
	a.start(t)
	t.Cleanup(func() {
		a.Kill()
		if t.Failed() {
			if b, err := os.ReadFile(a.Log); err == nil {
				t.Logf("agent log:\n%s", tail(string(b), 4000))
			}
		}
	})
	return a
}

func (a *Agent) start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(a.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	a.Cmd = exec.Command(a.bin, a.args...)
	a.Cmd.Stderr = logf
	a.Cmd.Stdout = logf
	// Its own process group, so cleanup can kill its execs' orphans too.
	a.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := a.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go a.Cmd.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := a.Client(t)
	defer cl.Close()
	if err := cl.Ping(ctx); err != nil {
		t.Fatalf("agent did not come up on %s: %v", a.Addr, err)
	}
}

// Restart kills the agent and starts a new one on the same socket.
func (a *Agent) Restart(t testing.TB) {
	t.Helper()
	a.Kill()
	a.start(t)
}

// Kill stops the agent: SIGTERM (it kills its running execs), then SIGKILL.
func (a *Agent) Kill() {
	if a.Cmd == nil || a.Cmd.Process == nil {
		return
	}
	a.Cmd.Process.Signal(syscall.SIGTERM)
	if !a.waitGone(3 * time.Second) {
		a.Cmd.Process.Kill()
		a.waitGone(3 * time.Second)
	}
}

// KillHard kills the agent with SIGKILL only, as a crash would.
func (a *Agent) KillHard() {
	if a.Cmd != nil && a.Cmd.Process != nil {
		a.Cmd.Process.Kill()
		a.waitGone(3 * time.Second)
	}
}

func (a *Agent) waitGone(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		// The reaping goroutine (Cmd.Wait) makes the pid disappear.
		if syscall.Kill(a.Cmd.Process.Pid, 0) != nil {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// Client returns a client for the agent, closed at cleanup.
func (a *Agent) Client(t testing.TB) *agentclient.Client {
	t.Helper()
	cl, err := agentclient.New(a.Addr, agentclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// Supervisor returns the path of the built host-supervisor binary.
func Supervisor(t testing.TB) string {
	return filepath.Join(Binaries(t), "host-supervisor")
}

// Env returns os.Environ() without the variables that would leak a
// developer's agent into a test.
func Env() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SAILBOX_AGENT=") {
			out = append(out, kv)
		}
	}
	return out
}
