package supervisor

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/agenttest"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"github.com/sailbox/sailbox/protocol/transport"
)

// daemonProc is a host-supervisor serve subprocess.
type daemonProc struct {
	t        testing.TB
	StateDir string
	Socket   string
	API      string
	Log      string
	cmd      *exec.Cmd
	args     []string
}

// startDaemon runs `host-supervisor serve` on a fresh state dir and waits
// until its API answers. It is killed at cleanup.
func startDaemon(t testing.TB, extra ...string) *daemonProc {
	t.Helper()
	dir := t.TempDir()
	p := &daemonProc{
		t: t, StateDir: filepath.Join(dir, "state"), Socket: filepath.Join(dir, "api.sock"),
		Log: filepath.Join(dir, "supervisor.log"), args: extra,
	}
	p.API = "unix://" + p.Socket
	p.Start()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			if b, err := os.ReadFile(p.Log); err == nil {
				s := string(b)
				if len(s) > 6000 {
					s = "…" + s[len(s)-6000:]
				}
				t.Logf("supervisor log:\n%s", s)
			}
		}
	})
	return p
}

// Start (re)starts the daemon on the same state dir and socket.
func (p *daemonProc) Start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"serve", "--state-dir", p.StateDir, "--api", p.API}, p.args...)
	p.cmd = exec.Command(agenttest.Supervisor(p.t), args...)
	p.cmd.Env = env()
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	go p.cmd.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	api, closeFn := dialAPI(p.t, p.API)
	defer closeFn()
	for {
		if _, err := api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{}); err == nil {
			return
		} else if ctx.Err() != nil {
			p.t.Fatalf("supervisor did not come up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// KillHard kills the daemon with SIGKILL, as a crash would.
func (p *daemonProc) KillHard() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Kill()
		waitGone(p.cmd.Process.Pid)
	}
}

// Kill stops the daemon (SIGTERM, then SIGKILL).
func (p *daemonProc) Kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if !waitGone(p.cmd.Process.Pid) {
		p.KillHard()
	}
}

// Pid is the daemon's process id.
func (p *daemonProc) Pid() int { return p.cmd.Process.Pid }

func waitGone(pid int) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return false
}

// env is the environment for subprocesses: no developer targets leaking in.
func env() []string {
	var out []string
	for _, kv := range agenttest.Env() {
		if !strings.HasPrefix(kv, "SAILBOX_SUPERVISOR=") && !strings.HasPrefix(kv, "SAILBOX_SANDBOX=") {
			out = append(out, kv)
		}
	}
	return out
}

// dialAPI returns a reconnecting-by-hand API client: call reconnect() after
// a connection error.
func dialAPI(t testing.TB, api string) (supervisorv1.SupervisorClient, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	nc, err := transport.Dial(ctx, api)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(nc)
	return supervisorv1.NewSupervisorClient(tc), func() { tc.Close() }
}

// apiClient is an API client that redials after the daemon restarts.
type apiClient struct {
	api string
	t   testing.TB
	mu  chan struct{}
	tc  *ttrpc.Client
	c   supervisorv1.SupervisorClient
}

func newAPIClient(t testing.TB, api string) *apiClient {
	c := &apiClient{api: api, t: t, mu: make(chan struct{}, 1)}
	t.Cleanup(func() {
		if c.tc != nil {
			c.tc.Close()
		}
	})
	return c
}

func (c *apiClient) get(ctx context.Context) (supervisorv1.SupervisorClient, *ttrpc.Client, error) {
	c.mu <- struct{}{}
	defer func() { <-c.mu }()
	if c.tc != nil {
		return c.c, c.tc, nil
	}
	nc, err := transport.Dial(ctx, c.api)
	if err != nil {
		return nil, nil, err
	}
	c.tc = ttrpc.NewClient(nc)
	c.c = supervisorv1.NewSupervisorClient(c.tc)
	return c.c, c.tc, nil
}

// do runs f until it succeeds or fails with something other than a broken
// link (the daemon being killed and restarted), or ctx ends.
func (c *apiClient) do(ctx context.Context, f func(supervisorv1.SupervisorClient) error) error {
	for {
		api, tc, err := c.get(ctx)
		if err == nil {
			err = f(api)
			if err == nil || !agentclient.IsConnectionError(err) {
				return err
			}
			c.mu <- struct{}{}
			if c.tc == tc {
				c.tc.Close()
				c.tc = nil
			}
			<-c.mu
		}
		if ctx.Err() != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// vmRSS returns a process's resident set size in KiB.
func vmRSS(t testing.TB, pid int) int {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int
			for _, f := range strings.Fields(v) {
				if n, err := strconv.Atoi(f); err == nil {
					kb = n
					break
				}
			}
			return kb
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}
