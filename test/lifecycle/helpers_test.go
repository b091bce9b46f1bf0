package lifecycletest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/vmm"
	"github.com/sailbox/sailbox/internal/agenttest"
	"github.com/sailbox/sailbox/internal/testcap"
)

// events is an append-only log shared by the agent's freeze hooks (a
// shell script appending to the file), the VMM fake and the journal fake,
// so the test sees the true order across processes.
type events struct {
	path string
	mu   sync.Mutex
}

func (e *events) add(format string, a ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f, err := os.OpenFile(e.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(f, format+"\n", a...)
	f.Close()
}

func (e *events) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	b, _ := os.ReadFile(e.path)
	return strings.Fields(string(b))
}

func (e *events) reset() {
	e.mu.Lock()
	defer e.mu.Unlock()
	os.Remove(e.path)
}

// agentProc is a real guest-agent in its own UTS and network namespaces
// and without CAP_SYS_TIME: Resume's hostname change and connection drop
// stay inside, and a clock step would fail rather than move the host's
// clock. Its freeze root is a scratch dir, so no host filesystem is frozen.
type agentProc struct {
	addr, socket string
	scratch      string
	ev           *events
	cmd          *exec.Cmd
}

func startAgent(t testing.TB) *agentProc { return startAgentHooks(t, true) }

// startAgentHooks starts the agent, with the event-logging freeze hook or
// without any hook.
func startAgentHooks(t testing.TB, logHook bool) *agentProc {
	t.Helper()
	testcap.Root(t)
	unshare, setpriv := testcap.Command(t, "unshare"), testcap.Command(t, "setpriv")
	dir := t.TempDir()
	a := &agentProc{socket: filepath.Join(dir, "agent.sock"), scratch: filepath.Join(dir, "scratch"), ev: &events{path: filepath.Join(dir, "events")}}
	a.addr = "unix://" + a.socket
	hooks := filepath.Join(dir, "hooks")
	for _, d := range []string{hooks, a.scratch} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The agent runs hooks with "freeze" before freezing and "thaw" after thawing.
	hook := fmt.Sprintf("#!/bin/sh\necho agent-$1 >> %s\n", a.ev.path)
	if logHook {
		if err := os.WriteFile(filepath.Join(hooks, "10-log"), []byte(hook), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	logPath := filepath.Join(dir, "agent.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	bin := filepath.Join(agenttest.Binaries(t), "guest-agent")
	a.cmd = exec.Command(unshare, "--uts", "--net", "--",
		setpriv, "--bounding-set", "-sys_time", "--",
		bin, "--listen", a.addr, "--state-dir", filepath.Join(dir, "state"),
		"--freeze-root", a.scratch, "--freeze-hooks", hooks, "--freeze-watchdog", "20s")
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		a.cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("agent log:\n%s", b)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := a.client(t, a.addr)
	for {
		if err := c.Ping(ctx); err == nil {
			break
		} else if ctx.Err() != nil {
			t.Fatalf("agent on %s: %v", a.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return a
}

func (a *agentProc) client(t testing.TB, addr string) *agentclient.Client {
	t.Helper()
	c, err := agentclient.New(addr, agentclient.Options{DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// resetProxy forwards a unix socket to the agent and can reset every
// connection at once, as a snapshot does to vsock connections.
type resetProxy struct {
	path     string
	mu       sync.Mutex
	pairs    map[net.Conn]net.Conn // client side -> agent side, while open
	resets   int
	cut      int // connections cut by resets
	accepted int
}

func newResetProxy(t *testing.T, target string) *resetProxy {
	t.Helper()
	p := &resetProxy{path: filepath.Join(t.TempDir(), "proxy.sock"), pairs: map[net.Conn]net.Conn{}}
	l, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); p.ResetAll() })
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
			p.mu.Lock()
			p.pairs[c] = up
			p.accepted++
			p.mu.Unlock()
			end := func() {
				c.Close()
				up.Close()
				p.mu.Lock()
				delete(p.pairs, c)
				p.mu.Unlock()
			}
			go func() { io.Copy(up, c); end() }()
			go func() { io.Copy(c, up); end() }()
		}
	}()
	return p
}

func (p *resetProxy) addr() string { return "unix://" + p.path }

// ResetAll cuts every open connection and returns how many there were.
func (p *resetProxy) ResetAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.pairs)
	for c, up := range p.pairs {
		c.Close()
		up.Close()
		delete(p.pairs, c)
	}
	p.resets++
	p.cut += n
	return n
}

func (p *resetProxy) connections() (accepted, open int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted, len(p.pairs)
}

func (p *resetProxy) stats() (resets, cut int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resets, p.cut
}

// fakeVMM records its calls in the event log. With snapshot it offers
// snapshot/restore (a snapshot writes a marker file); otherwise only
// pause/resume, like QEMU with vhost-user-vsock. Every snapshot and restore
// runs onReset (the proxy's ResetAll), as a real one resets vsock.
type fakeVMM struct {
	ev       *events
	snapshot bool
	onReset  func()

	mu         sync.Mutex
	failPause  error
	failResume error
	failSnap   error
	blockSnap  bool // Snapshot waits for ctx to end
	inSnapshot func()
	paused     bool
}

var _ vmm.VMM = (*fakeVMM)(nil)

func (v *fakeVMM) Capabilities() vmm.Capabilities {
	c := vmm.Capabilities{VMM: "fake", Pause: true, Resume: true, Snapshot: v.snapshot, Restore: v.snapshot}
	if !v.snapshot {
		c.Why = "no snapshot/restore: fake without it"
	}
	return c
}

func (v *fakeVMM) Pause(ctx context.Context) error {
	v.ev.add("vmm-pause")
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.failPause != nil {
		return v.failPause
	}
	v.paused = true
	return nil
}

func (v *fakeVMM) Resume(ctx context.Context) error {
	v.ev.add("vmm-resume")
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.failResume != nil {
		return v.failResume
	}
	v.paused = false
	return nil
}

func (v *fakeVMM) Snapshot(ctx context.Context, path string) error {
	v.ev.add("vmm-snapshot")
	if !v.snapshot {
		return vmm.Unsupported("fake", "snapshot", "no")
	}
	if v.inSnapshot != nil {
		v.inSnapshot()
	}
	if v.onReset != nil {
		v.onReset()
	}
	if v.blockSnap {
		<-ctx.Done()
		return ctx.Err()
	}
	if v.failSnap != nil {
		return v.failSnap
	}
	return os.WriteFile(path, []byte("fake snapshot\n"), 0o644)
}

func (v *fakeVMM) Restore(ctx context.Context, path string) error {
	v.ev.add("vmm-restore")
	if !v.snapshot {
		return vmm.Unsupported("fake", "restore", "no")
	}
	if _, err := os.Stat(path); err != nil {
		return err
	}
	if v.onReset != nil {
		v.onReset()
	}
	return nil
}

// execRec is a journalled exec in the journal fake.
type execRec struct {
	id    string
	gen   uint64 // the sandbox's generation when accepted
	final bool
	lost  string
}

// fakeJournal keeps generations and exec records with the daemon's rule:
// restoring checkpoint G loses the unfinished execs accepted at or after it
// (generation >= G).
type fakeJournal struct {
	ev    *events
	mu    sync.Mutex
	gen   map[string]uint64
	execs map[string][]*execRec
}

func newJournal(ev *events) *fakeJournal {
	return &fakeJournal{ev: ev, gen: map[string]uint64{}, execs: map[string][]*execRec{}}
}

func (j *fakeJournal) accept(sandbox, id string, final bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.execs[sandbox] = append(j.execs[sandbox], &execRec{id: id, gen: j.gen[sandbox], final: final})
}

func (j *fakeJournal) Generation(sandbox string) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.gen[sandbox], nil
}

func (j *fakeJournal) BumpGeneration(sandbox string) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.gen[sandbox]++
	j.ev.add("journal-bump-%d", j.gen[sandbox])
	return j.gen[sandbox], nil
}

func (j *fakeJournal) RestoreGeneration(sandbox string, gen uint64) ([]string, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.ev.add("journal-restore-%d", gen)
	var lost []string
	for _, r := range j.execs[sandbox] {
		if r.gen >= gen && !r.final && r.lost == "" {
			r.lost = fmt.Sprintf("not replayed: restored to checkpoint %d", gen)
			lost = append(lost, r.id)
		}
	}
	j.gen[sandbox] = gen
	return lost, nil
}

// lines reads a file's lines (for small outputs).
func lines(r io.Reader) []string {
	var out []string
	s := bufio.NewScanner(r)
	for s.Scan() {
		out = append(out, s.Text())
	}
	return out
}

func strconvU(n uint64) string { return fmt.Sprint(n) }
