package lifecycletest

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/daemon"
	"github.com/sailbox/sailbox/host-supervisor/lifecycle"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var _ lifecycle.Generations = (*daemon.Daemon)(nil)

// The durable daemon as the journal: a checkpoint is journalled as the
// sandbox's generation; a restore marks the execs accepted after that
// checkpoint lost ("not replayed") in the daemon's journal, and keeps the
// ones from before.
func TestRestoreLosesExecsInTheDaemonJournal(t *testing.T) {
	a := startAgent(t)
	d, err := daemon.Open(daemon.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if _, err := d.AddSandbox("sb", a.addr, nil); err != nil {
		t.Fatal(err)
	}
	proxy := newResetProxy(t, a.socket)
	v := &fakeVMM{ev: a.ev, snapshot: true, onReset: func() { proxy.ResetAll() }}
	sb := lifecycle.New(lifecycle.Config{ID: "sb", Agent: a.client(t, proxy.addr()), VMM: v, Journal: lifecycle.DaemonJournal{D: d}})
	m := lifecycle.NewManager()
	m.Add(sb)
	ctx := ctxT(t)

	start := func(id, cmd string) {
		t.Helper()
		// What the daemon does before forwarding an exec.
		if err := m.Wake(ctx, "sb"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: "sb", Request: &agentv1.StartRequest{Id: id, Command: cmd}}); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
	}
	start("before", "sleep 30")
	path := filepath.Join(t.TempDir(), "snap")
	rep, err := sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: path})
	if err != nil || rep.Generation != 1 {
		t.Fatalf("checkpoint: %+v %v", rep, err)
	}
	if g, _ := (lifecycle.DaemonJournal{D: d}).Generation("sb"); g != 1 {
		t.Fatalf("daemon's generation %d after the checkpoint", g)
	}
	// Asleep: the next exec wakes it.
	if err := sb.Sleep(ctx); err != nil {
		t.Fatal(err)
	}
	start("after", "sleep 30")
	if sb.State() != lifecycle.Running {
		t.Fatalf("state %v after an exec on a sleeping sandbox", sb.State())
	}

	r, err := sb.Restore(ctx, lifecycle.RestoreOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Lost, []string{"after"}) || r.Generation != 1 {
		t.Fatalf("restore: lost %q, generation %d", r.Lost, r.Generation)
	}
	rec, err := d.GetExec("sb", "after")
	if err != nil || rec.State != supervisorv1.ExecState_EXEC_STATE_LOST || !strings.Contains(rec.Reason, "not replayed") {
		t.Fatalf("exec after the checkpoint: %+v %v", rec, err)
	}
	rec, err = d.GetExec("sb", "before")
	if err != nil || rec.State != supervisorv1.ExecState_EXEC_STATE_RUNNING {
		t.Fatalf("exec before the checkpoint: %+v %v", rec, err)
	}

	// A sandbox without a VMM: Wake is a no-op, lifecycle calls NotFound.
	if err := m.Wake(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get("other"); status.Code(err) != codes.NotFound {
		t.Fatalf("get of a sandbox without VMM: %v", err)
	}
}

var _ lifecycle.Disconnecter = (*agentclient.Client)(nil)
