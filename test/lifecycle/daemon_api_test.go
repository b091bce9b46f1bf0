package lifecycletest

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/daemon"
	"github.com/sailbox/sailbox/host-supervisor/vmm"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// stoppingVMM is the fake VMM whose pause really stops the guest: the
// agent's process group gets SIGSTOP (SIGCONT on resume), so an exec sent
// to a sleeping sandbox that was not woken would hang, not pass.
type stoppingVMM struct {
	*fakeVMM
	pgid int
}

func (v *stoppingVMM) Pause(ctx context.Context) error {
	if err := v.fakeVMM.Pause(ctx); err != nil {
		return err
	}
	return syscall.Kill(-v.pgid, syscall.SIGSTOP)
}

func (v *stoppingVMM) Resume(ctx context.Context) error {
	if err := v.fakeVMM.Resume(ctx); err != nil {
		return err
	}
	return syscall.Kill(-v.pgid, syscall.SIGCONT)
}

// apiDaemon runs the daemon with the fake VMM behind the monitor name
// "fake.qmp" and serves its control API on a unix socket.
func apiDaemon(t *testing.T, v vmm.VMM, closed *atomic.Int32) supervisorv1.SupervisorClient {
	api, _ := apiDaemonAt(t, t.TempDir(), v, closed)
	return api
}

// apiDaemonAt runs the daemon on stateDir; stop closes it (idempotent).
func apiDaemonAt(t *testing.T, stateDir string, v vmm.VMM, closed *atomic.Int32) (supervisorv1.SupervisorClient, func()) {
	t.Helper()
	d, err := daemon.Open(daemon.Config{StateDir: stateDir, DialVMM: func(ctx context.Context, id, qmp string) (vmm.VMM, func() error, error) {
		if qmp != "fake.qmp" {
			return nil, nil, status.Errorf(codes.Unavailable, "no monitor at %s", qmp)
		}
		return v, func() error { closed.Add(1); return nil }, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	api := "unix://" + filepath.Join(t.TempDir(), "api.sock")
	l, err := daemon.Listen(api)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { d.Serve(ctx, l); close(served) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-served; d.Close() }) }
	t.Cleanup(stop)
	nc, err := transport.Dial(ctxT(t), api)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(nc)
	t.Cleanup(func() { tc.Close() })
	return supervisorv1.NewSupervisorClient(tc), stop
}

func count(xs []string, x string) int {
	n := 0
	for _, y := range xs {
		if y == x {
			n++
		}
	}
	return n
}

// The lifecycle verbs through the daemon's control API, on a real agent
// behind a connection-resetting proxy, with a VMM whose pause stops the
// agent: checkpoint bumps the journalled generation; a sleeping sandbox is
// woken exactly once by concurrent execs; pause is not woken by an exec;
// restore marks the execs after the checkpoint lost ("not replayed").
func TestDaemonLifecycleAPI(t *testing.T) {
	a := startAgentHooks(t, false)
	proxy := newResetProxy(t, a.socket)
	v := &stoppingVMM{fakeVMM: &fakeVMM{ev: a.ev, snapshot: true, onReset: func() { proxy.ResetAll() }}, pgid: a.cmd.Process.Pid}
	t.Cleanup(func() { syscall.Kill(-v.pgid, syscall.SIGCONT) })
	var closed atomic.Int32
	api := apiDaemon(t, v, &closed)
	ctx := ctxT(t)

	sb, err := api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: "sb", Agent: proxy.addr(), Qmp: "fake.qmp"})
	if err != nil || sb.State != "running" {
		t.Fatalf("add with a VMM: %+v %v", sb, err)
	}
	if sb, err := api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: "plain", Agent: a.addr}); err != nil || sb.State != "" {
		t.Fatalf("add without a VMM: %+v %v", sb, err)
	}
	if _, err := api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: "bad", Agent: a.addr, Qmp: "/nonexistent.qmp"}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "sandbox bad: vmm at /nonexistent.qmp") {
		t.Fatalf("add with an unreachable monitor: %v", err)
	}
	if resp, _ := api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{}); len(resp.GetSandboxes()) != 2 {
		t.Fatalf("a sandbox whose monitor is unreachable was registered: %v", resp)
	}
	start := func(id, cmd string) error {
		_, err := api.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: "sb", Request: &agentv1.StartRequest{Id: id, Command: cmd}})
		return err
	}
	state := func() (string, uint64) {
		t.Helper()
		resp, err := api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range resp.Sandboxes {
			if s.Id == "sb" {
				return s.State, s.Generation
			}
		}
		t.Fatal("sandbox sb not listed")
		return "", 0
	}

	if err := start("before", "sleep 30"); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(t.TempDir(), "snap")
	cp, err := api.Checkpoint(ctx, &supervisorv1.CheckpointRequest{Sandbox: "sb", Path: snap})
	if err != nil || cp.Generation != 1 || cp.Snapshot != snap || cp.Paused {
		t.Fatalf("checkpoint: %+v %v", cp, err)
	}
	if st, gen := state(); st != "running" || gen != 1 {
		t.Fatalf("after the checkpoint: state %q generation %d", st, gen)
	}

	// Sleep; four concurrent execs wake it once and all run.
	if r, err := api.Sleep(ctx, &supervisorv1.SandboxRef{Id: "sb"}); err != nil || r.State != "asleep" {
		t.Fatalf("sleep: %+v %v", r, err)
	}
	if st, _ := state(); st != "asleep" {
		t.Fatalf("state %q after sleep", st)
	}
	a.ev.reset()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("w%d", i)
			if errs[i] = start(id, "echo "+id); errs[i] == nil {
				var r *supervisorv1.ExecRecord
				r, errs[i] = api.WaitExec(ctx, &supervisorv1.ExecRef{Sandbox: "sb", Id: id})
				if errs[i] == nil && (r.State != supervisorv1.ExecState_EXEC_STATE_EXITED || r.ExitCode != 0) {
					errs[i] = fmt.Errorf("exec %s: %v", id, r)
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("exec on a sleeping sandbox: %v", err)
		}
	}
	if ev := a.ev.list(); count(ev, "vmm-resume") != 1 || count(ev, "vmm-pause") != 0 {
		t.Fatalf("events after four execs on a sleeping sandbox: %q (want one vmm-resume)", ev)
	}
	if st, _ := state(); st != "running" {
		t.Fatalf("state %q after the wake", st)
	}
	if err := start("after", "sleep 30"); err != nil {
		t.Fatal(err)
	}

	// Other calls that reach the agent wake it too.
	if _, err := api.Sleep(ctx, &supervisorv1.SandboxRef{Id: "sb"}); err != nil {
		t.Fatal(err)
	}
	a.ev.reset()
	if fi, err := api.StatFile(ctx, &supervisorv1.StatFileRequest{Sandbox: "sb", Path: "/"}); err != nil || fi.Type != agentv1.FileType_FILE_TYPE_DIRECTORY {
		t.Fatalf("stat on a sleeping sandbox: %+v %v", fi, err)
	}
	if ev := a.ev.list(); !slices.Equal(ev, []string{"vmm-resume"}) {
		t.Fatalf("events after a stat on a sleeping sandbox: %q", ev)
	}
	if _, err := api.Sleep(ctx, &supervisorv1.SandboxRef{Id: "sb"}); err != nil {
		t.Fatal(err)
	}
	a.ev.reset()
	_, err = api.WaitListener(ctx, &supervisorv1.WaitListenerRequest{Sandbox: "sb", Request: &agentv1.WaitListenerRequest{
		Port: 1, Protocol: agentv1.ListenerProtocol_LISTENER_PROTOCOL_TCP, TimeoutMs: 100}})
	if status.Code(err) != codes.DeadlineExceeded || !slices.Equal(a.ev.list(), []string{"vmm-resume"}) {
		t.Fatalf("wait-listener on a sleeping sandbox: %v, events %q", err, a.ev.list())
	}

	// Pause means until Resume: an exec is refused, and not journalled.
	if r, err := api.Pause(ctx, &supervisorv1.SandboxRef{Id: "sb"}); err != nil || r.State != "paused" {
		t.Fatalf("pause: %+v %v", r, err)
	}
	if err := start("refused", "true"); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("exec on a paused sandbox: %v", err)
	}
	if _, err := api.GetExec(ctx, &supervisorv1.ExecRef{Id: "refused"}); status.Code(err) != codes.NotFound {
		t.Fatalf("refused exec journalled: %v", err)
	}
	if _, err := api.Sleep(ctx, &supervisorv1.SandboxRef{Id: "sb"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("sleep while paused: %v", err)
	}
	rr, err := api.Resume(ctx, &supervisorv1.SandboxRef{Id: "sb"})
	if err != nil || rr.Was != "paused" || rr.Agent == nil || rr.Agent.Generation != 1 || rr.Agent.EntropyBytes < 64 {
		t.Fatalf("resume: %+v %v", rr, err)
	}

	// Restore: the exec accepted after the checkpoint is lost, not replayed.
	rs, err := api.Restore(ctx, &supervisorv1.RestoreRequest{Sandbox: "sb", Path: snap})
	if err != nil || rs.Generation != 1 || !slices.Equal(rs.Lost, []string{"after"}) || rs.Resume == nil {
		t.Fatalf("restore: %+v %v", rs, err)
	}
	if r, err := api.GetExec(ctx, &supervisorv1.ExecRef{Id: "after"}); err != nil || r.State != supervisorv1.ExecState_EXEC_STATE_LOST || !strings.Contains(r.Reason, "not replayed") {
		t.Fatalf("exec after the checkpoint: %+v %v", r, err)
	}
	if r, err := api.GetExec(ctx, &supervisorv1.ExecRef{Id: "before"}); err != nil || r.State != supervisorv1.ExecState_EXEC_STATE_RUNNING {
		t.Fatalf("exec before the checkpoint: %+v %v", r, err)
	}
	if _, err := api.Restore(ctx, &supervisorv1.RestoreRequest{Sandbox: "sb", Path: snap, Identity: &agentv1.SandboxIdentity{Hostname: "x"}}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("restore with an identity: %v", err)
	}
	fk, err := api.Fork(ctx, &supervisorv1.RestoreRequest{Sandbox: "sb", Path: snap, Identity: &agentv1.SandboxIdentity{Hostname: "forked"}})
	if err != nil || fk.Resume.GetHostname() != "forked" || fk.Resume.GetSandboxId() != "sb" {
		t.Fatalf("fork: %+v %v", fk, err)
	}
	// The exec from before the checkpoint still answers after the resets.
	if _, err := api.SignalExec(ctx, &supervisorv1.SignalExecRequest{Sandbox: "sb", Id: "before", Signal: int32(syscall.SIGTERM)}); err != nil {
		t.Fatal(err)
	}
	if r, err := api.WaitExec(ctx, &supervisorv1.ExecRef{Id: "before"}); err != nil || r.Signal != int32(syscall.SIGTERM) {
		t.Fatalf("exec before the checkpoint, signalled: %+v %v", r, err)
	}

	// Errors: a sandbox without a VMM, an unknown one.
	if _, err := api.Checkpoint(ctx, &supervisorv1.CheckpointRequest{Sandbox: "plain", Path: snap}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "sandbox plain: no VMM attached") {
		t.Fatalf("checkpoint without a VMM: %v", err)
	}
	if _, err := api.Sleep(ctx, &supervisorv1.SandboxRef{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("sleep of an unknown sandbox: %v", err)
	}
	// Adding again with the same monitor keeps the lifecycle; removing closes the monitor.
	if _, err := api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: "sb", Agent: proxy.addr(), Qmp: "fake.qmp"}); err != nil || closed.Load() != 0 {
		t.Fatalf("re-add: %v (monitor closed %d times)", err, closed.Load())
	}
	if _, err := api.RemoveSandbox(ctx, &supervisorv1.SandboxRef{Id: "sb"}); err != nil || closed.Load() != 1 {
		t.Fatalf("remove: %v (monitor closed %d times)", err, closed.Load())
	}
}

// A restarted daemon re-attaches the journalled monitors in their run
// state: a sandbox that slept still wakes on the next exec (exactly once),
// a paused one still refuses execs until resumed.
func TestDaemonRestartKeepsVMMState(t *testing.T) {
	a := startAgentHooks(t, false)
	v := &stoppingVMM{fakeVMM: &fakeVMM{ev: a.ev}, pgid: a.cmd.Process.Pid}
	t.Cleanup(func() { syscall.Kill(-v.pgid, syscall.SIGCONT) })
	var closed atomic.Int32
	dir := t.TempDir()
	ctx := ctxT(t)
	api, stop := apiDaemonAt(t, dir, v, &closed)
	for _, id := range []string{"sleeper", "pauser"} {
		if _, err := api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: id, Agent: a.addr, Qmp: "fake.qmp"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := api.Sleep(ctx, &supervisorv1.SandboxRef{Id: "sleeper"}); err != nil {
		t.Fatal(err)
	}
	stop()
	if closed.Load() != 2 {
		t.Fatalf("monitors closed %d times at daemon close, want 2", closed.Load())
	}

	api, stop = apiDaemonAt(t, dir, v, &closed)
	states := map[string]string{}
	resp, err := api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range resp.Sandboxes {
		states[s.Id] = s.State
	}
	if states["sleeper"] != "asleep" || states["pauser"] != "running" {
		t.Fatalf("states after a daemon restart: %v", states)
	}
	a.ev.reset()
	if _, err := api.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: "sleeper", Request: &agentv1.StartRequest{Id: "e1", Command: "true"}}); err != nil {
		t.Fatalf("exec on a sandbox that slept across a daemon restart: %v", err)
	}
	if ev := a.ev.list(); count(ev, "vmm-resume") != 1 {
		t.Fatalf("events: %q (want one vmm-resume)", ev)
	}
	if _, err := api.Pause(ctx, &supervisorv1.SandboxRef{Id: "pauser"}); err != nil {
		t.Fatal(err)
	}
	stop()

	api, _ = apiDaemonAt(t, dir, v, &closed)
	if _, err := api.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: "pauser", Request: &agentv1.StartRequest{Id: "e2", Command: "true"}}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("exec on a sandbox paused across a daemon restart: %v", err)
	}
	if r, err := api.Resume(ctx, &supervisorv1.SandboxRef{Id: "pauser"}); err != nil || r.Was != "paused" {
		t.Fatalf("resume after a daemon restart: %+v %v", r, err)
	}
	if _, err := api.RemoveSandbox(ctx, &supervisorv1.SandboxRef{Id: "pauser"}); err != nil {
		t.Fatal(err)
	}
	resp, _ = api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{})
	if len(resp.GetSandboxes()) != 1 || resp.Sandboxes[0].State != "running" {
		t.Fatalf("after removing one: %v", resp)
	}
}
