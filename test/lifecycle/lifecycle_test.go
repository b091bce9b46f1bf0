package lifecycletest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/lifecycle"
	"github.com/sailbox/sailbox/host-supervisor/vmm"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type rig struct {
	a     *agentProc
	proxy *resetProxy
	agent *agentclient.Client // through the proxy
	vmm   *fakeVMM
	j     *fakeJournal
	sb    *lifecycle.Sandbox
}

// newRig wires a lifecycle to the real agent through a resetting proxy.
func newRig(t *testing.T, snapshot bool) *rig {
	a := startAgent(t)
	r := &rig{a: a, proxy: newResetProxy(t, a.socket), j: newJournal(a.ev)}
	r.agent = a.client(t, r.proxy.addr())
	r.vmm = &fakeVMM{ev: a.ev, snapshot: snapshot, onReset: func() { r.proxy.ResetAll() }}
	r.sb = lifecycle.New(lifecycle.Config{ID: "sb1", Agent: r.agent, VMM: r.vmm, Journal: r.j, ThawTimeout: 10 * time.Second})
	return r
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantEvents(t *testing.T, ev *events, want ...string) {
	t.Helper()
	if got := ev.list(); !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
}

func wantThawed(t *testing.T, c *agentclient.Client) {
	t.Helper()
	st, err := c.FreezeStatus(context.Background(), &agentv1.FreezeStatusRequest{})
	if err != nil || st.Frozen {
		t.Fatalf("agent still frozen after the checkpoint: %+v %v", st, err)
	}
}

// A VMM that cannot snapshot: freeze → pause → resume → thaw → bump.
func TestCheckpointPauseOrder(t *testing.T) {
	r := newRig(t, false)
	ctx := ctxT(t)
	for gen := uint64(1); gen <= 2; gen++ {
		r.a.ev.reset()
		rep, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: "/ignored"})
		if err != nil {
			t.Fatal(err)
		}
		wantEvents(t, r.a.ev, "agent-freeze", "vmm-pause", "vmm-resume", "agent-thaw", "journal-bump-"+itoa(gen))
		if rep.Generation != gen || !rep.Paused || rep.Snapshot != "" || rep.Quiesced <= 0 {
			t.Fatalf("report %+v", rep)
		}
	}
	wantThawed(t, r.agent)
	if r.sb.State() != lifecycle.Running {
		t.Fatalf("state %v", r.sb.State())
	}
}

// WhileQuiesced runs between pause and resume (or after the snapshot),
// with the guest frozen; its failure undoes everything and journals nothing.
func TestCheckpointWhileQuiesced(t *testing.T) {
	for _, snapshot := range []bool{false, true} {
		r := newRig(t, snapshot)
		ctx := ctxT(t)
		frozen := func(ctx context.Context) error {
			st, err := r.agent.FreezeStatus(ctx, &agentv1.FreezeStatusRequest{})
			if err != nil || !st.Frozen {
				return fmt.Errorf("not frozen while quiesced: %+v %v", st, err)
			}
			r.a.ev.add("copy-disk")
			return nil
		}
		vmmStep := []string{"vmm-pause", "copy-disk", "vmm-resume"}
		if snapshot {
			vmmStep = []string{"vmm-snapshot", "copy-disk"}
		}
		if _, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: filepath.Join(t.TempDir(), "s"), WhileQuiesced: frozen}); err != nil {
			t.Fatal(err)
		}
		wantEvents(t, r.a.ev, append(append([]string{"agent-freeze"}, vmmStep...), "agent-thaw", "journal-bump-1")...)

		r.a.ev.reset()
		_, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: filepath.Join(t.TempDir(), "s"), WhileQuiesced: func(context.Context) error {
			r.a.ev.add("copy-disk")
			return status.Error(codes.ResourceExhausted, "no space for the disk copy")
		}})
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "while quiesced: no space") {
			t.Fatalf("failing WhileQuiesced: %v", err)
		}
		wantEvents(t, r.a.ev, append(append([]string{"agent-freeze"}, vmmStep...), "agent-thaw")...)
		wantThawed(t, r.agent)
		if g, _ := r.j.Generation("sb1"); g != 1 {
			t.Fatalf("generation %d after a failed checkpoint", g)
		}
	}
}

// A snapshot resets every connection in the middle of an exec's output
// stream: the checkpoint (thaw after the reset) succeeds and the client
// sees every byte exactly once.
func TestCheckpointSnapshotResetsConnectionsMidStream(t *testing.T) {
	r := newRig(t, true)
	ctx := ctxT(t)
	streamer := r.a.client(t, r.proxy.addr()) // its own connection
	src := filepath.Join(t.TempDir(), "src")
	// ~6 MB over ~3 s: long enough to checkpoint in the middle.
	cmd := "for i in $(seq 1 120); do head -c 50000 /dev/urandom; sleep 0.02; done | tee " + src + "; echo done >&2"
	if _, err := streamer.Start(ctx, &agentv1.StartRequest{Id: "stream", Command: cmd}); err != nil {
		t.Fatal(err)
	}
	var got atomic.Int64
	h := sha256.New()
	var errb bytes.Buffer
	type res struct {
		st  *agentv1.ExecStatus
		err error
	}
	done := make(chan res, 1)
	go func() {
		st, _, err := streamer.CopyOutput(ctx, "stream", agentclient.Offsets{}, true, countWriter{h, &got}, &errb)
		done <- res{st, err}
	}()
	for got.Load() < 1<<20 {
		select {
		case x := <-done:
			t.Fatalf("output ended before the checkpoint: %+v", x)
		case <-time.After(5 * time.Millisecond):
		}
	}
	atCheckpoint := got.Load()
	path := filepath.Join(t.TempDir(), "snap")
	rep, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	wantEvents(t, r.a.ev, "agent-freeze", "vmm-snapshot", "agent-thaw", "journal-bump-1")
	if rep.Generation != 1 || rep.Snapshot != path || rep.Paused {
		t.Fatalf("report %+v", rep)
	}
	// Both clients' connections (lifecycle and streamer) were cut at once
	// (the streamer's output may run on a data connection of its own: >= 2).
	if resets, cut := r.proxy.stats(); resets != 1 || cut < 2 {
		t.Fatalf("proxy resets %d, connections cut %d: the reset did not hit both clients", resets, cut)
	}
	x := <-done
	if x.err != nil {
		t.Fatal(x.err)
	}
	want, _ := os.ReadFile(src)
	sum := sha256.Sum256(want)
	if hex.EncodeToString(h.Sum(nil)) != hex.EncodeToString(sum[:]) || int(got.Load()) != len(want) || errb.String() != "done\n" || x.st.ExitCode != 0 {
		t.Fatalf("got %d bytes (want %d), stderr %q, status %+v", got.Load(), len(want), errb.String(), x.st)
	}
	if atCheckpoint >= int64(len(want)) {
		t.Fatalf("checkpoint was not mid-stream (%d of %d bytes)", atCheckpoint, len(want))
	}
	t.Logf("checkpoint at byte %d of %d; freeze %v, snapshot %v, thaw %v (quiesced %v)", atCheckpoint, len(want), rep.Freeze, rep.VMM, rep.Thaw, rep.Quiesced)
	wantThawed(t, r.agent)
}

type countWriter struct {
	w interface{ Write([]byte) (int, error) }
	n *atomic.Int64
}

func (c countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// Whatever fails after the freeze, the thaw happens and no generation is
// journalled.
func TestCheckpointThawsOnFailure(t *testing.T) {
	boom := errors.New("monitor went away")
	cases := []struct {
		name     string
		snapshot bool
		setup    func(v *fakeVMM)
		ctx      func(t *testing.T, v *fakeVMM) context.Context
		code     codes.Code
		events   []string
	}{
		{name: "pause fails", setup: func(v *fakeVMM) { v.failPause = boom }, code: codes.Unknown,
			events: []string{"agent-freeze", "vmm-pause", "vmm-resume", "agent-thaw"}},
		{name: "resume fails", setup: func(v *fakeVMM) { v.failResume = status.Error(codes.Unavailable, "qmp gone") }, code: codes.Unavailable,
			events: []string{"agent-freeze", "vmm-pause", "vmm-resume", "agent-thaw"}},
		{name: "snapshot fails", snapshot: true, setup: func(v *fakeVMM) { v.failSnap = status.Error(codes.ResourceExhausted, "disk full") }, code: codes.ResourceExhausted,
			events: []string{"agent-freeze", "vmm-snapshot", "agent-thaw"}},
		{name: "cancelled during snapshot", snapshot: true, code: codes.Canceled,
			ctx: func(t *testing.T, v *fakeVMM) context.Context {
				ctx, cancel := context.WithCancel(ctxT(t))
				v.blockSnap = true
				v.inSnapshot = cancel
				return ctx
			},
			events: []string{"agent-freeze", "vmm-snapshot", "agent-thaw"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, tc.snapshot)
			if tc.setup != nil {
				tc.setup(r.vmm)
			}
			ctx := ctxT(t)
			if tc.ctx != nil {
				ctx = tc.ctx(t, r.vmm)
			}
			rep, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: filepath.Join(t.TempDir(), "snap")})
			if status.Code(err) != tc.code || rep != nil || !strings.Contains(err.Error(), "sandbox sb1: checkpoint") {
				t.Fatalf("checkpoint: %v (code %v, want %v), report %+v", err, status.Code(err), tc.code, rep)
			}
			wantEvents(t, r.a.ev, tc.events...)
			wantThawed(t, r.agent)
			if g, _ := r.j.Generation("sb1"); g != 0 {
				t.Fatalf("generation bumped to %d by a failed checkpoint", g)
			}
		})
	}
}

// The guest's watchdog thaws during a slow snapshot: the snapshot may not
// be quiesced, so it is not a checkpoint.
func TestCheckpointWatchdogThawedDuringSnapshot(t *testing.T) {
	r := newRig(t, true)
	r.vmm.inSnapshot = func() { time.Sleep(1500 * time.Millisecond) }
	sb := lifecycle.New(lifecycle.Config{ID: "sb1", Agent: r.agent, VMM: r.vmm, Journal: r.j, FreezeWatchdog: 300 * time.Millisecond})
	rep, err := sb.Checkpoint(ctxT(t), lifecycle.CheckpointOptions{Path: filepath.Join(t.TempDir(), "snap")})
	if status.Code(err) != codes.Aborted || rep != nil || !strings.Contains(err.Error(), "thawed by itself") {
		t.Fatalf("checkpoint across a watchdog thaw: %+v %v", rep, err)
	}
	if g, _ := r.j.Generation("sb1"); g != 0 {
		t.Fatalf("generation bumped to %d", g)
	}
	st, err := r.agent.FreezeStatus(context.Background(), &agentv1.FreezeStatusRequest{})
	if err != nil || st.Frozen || st.LastThaw != "watchdog" {
		t.Fatalf("freeze status %+v %v", st, err)
	}
}

// A failed freeze (a hook refuses) is reported with its code; nothing else runs.
func TestCheckpointFreezeFails(t *testing.T) {
	r := newRig(t, false)
	hooks := filepath.Join(filepath.Dir(r.a.socket), "hooks")
	if err := os.WriteFile(filepath.Join(hooks, "20-refuse"), []byte("#!/bin/sh\n[ \"$1\" = freeze ] && exit 3\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := r.sb.Checkpoint(ctxT(t), lifecycle.CheckpointOptions{})
	if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "freeze") {
		t.Fatalf("checkpoint with a refusing hook: %v", err)
	}
	for _, e := range r.a.ev.list() {
		if strings.HasPrefix(e, "vmm-") || strings.HasPrefix(e, "journal-") {
			t.Fatalf("events after a failed freeze: %q", r.a.ev.list())
		}
	}
	wantThawed(t, r.agent)
}

// Restore: VMM restore (connections reset) → Resume with host time,
// entropy and the generation → journal: execs after the checkpoint lost.
func TestRestoreMarksLaterExecsLost(t *testing.T) {
	r := newRig(t, true)
	ctx := ctxT(t)
	r.j.accept("sb1", "before-done", true)
	r.j.accept("sb1", "before-running", false) // running inside the snapshot: restored, not lost
	path := filepath.Join(t.TempDir(), "snap")
	if _, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: path}); err != nil {
		t.Fatal(err)
	}
	r.j.accept("sb1", "after-done", true)
	r.j.accept("sb1", "after-running", false)
	r.j.accept("sb1", "after-accepted", false)
	if _, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: path + "2"}); err != nil {
		t.Fatal(err)
	}
	r.j.accept("sb1", "after2", false)
	r.a.ev.reset()

	rep, err := r.sb.Restore(ctx, lifecycle.RestoreOptions{Path: path, Generation: 1})
	if err != nil {
		t.Fatal(err)
	}
	wantEvents(t, r.a.ev, "vmm-restore", "journal-restore-1")
	if !slices.Equal(rep.Lost, []string{"after-running", "after-accepted", "after2"}) || rep.Generation != 1 {
		t.Fatalf("lost %q, generation %d", rep.Lost, rep.Generation)
	}
	res := rep.Resume
	if res == nil || res.Generation != 1 || res.EntropyBytes < 64 || !res.CrngReseeded || res.ClockStepped ||
		time.Duration(res.ClockOffsetNs).Abs() > time.Second {
		t.Fatalf("resume %+v", res)
	}
	if resets, _ := r.proxy.stats(); resets != 3 {
		t.Fatalf("%d connection resets, want 3 (two snapshots, one restore)", resets)
	}

	// Generation 0 = the journal's current one (now 1); the agent already
	// applied 1, so the same again is fine.
	if rep, err := r.sb.Restore(ctx, lifecycle.RestoreOptions{Path: path}); err != nil || rep.Generation != 1 || len(rep.Lost) != 0 {
		t.Fatalf("restore at the journal's generation: %+v %v", rep, err)
	}
}

// Restore drops the agent connection itself (the restored guest knows none
// of the old links) even when the VMM does not cut it: the Resume goes over
// a new connection.
func TestRestoreReconnects(t *testing.T) {
	r := newRig(t, true)
	r.vmm.onReset = nil
	ctx := ctxT(t)
	path := filepath.Join(t.TempDir(), "snap")
	if _, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: path}); err != nil {
		t.Fatal(err)
	}
	if acc, open := r.proxy.connections(); acc != 1 || open != 1 {
		t.Fatalf("before restore: %d accepted, %d open", acc, open)
	}
	if _, err := r.sb.Restore(ctx, lifecycle.RestoreOptions{Path: path}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		acc, open := r.proxy.connections()
		if acc == 2 && open == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after restore: %d accepted, %d open (want a new connection replacing the old)", acc, open)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A Resume the guest refuses (a generation older than the one it applied)
// still updates the journal: the VM was restored either way.
func TestRestoreJournalsEvenWhenResumeFails(t *testing.T) {
	r := newRig(t, true)
	ctx := ctxT(t)
	path := filepath.Join(t.TempDir(), "snap")
	for i := 0; i < 2; i++ {
		if _, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: path}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.sb.Restore(ctx, lifecycle.RestoreOptions{Path: path, Generation: 2}); err != nil {
		t.Fatal(err)
	}
	r.a.ev.reset()
	rep, err := r.sb.Restore(ctx, lifecycle.RestoreOptions{Path: path, Generation: 1})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "resume") || rep == nil {
		t.Fatalf("restore of an older generation: %+v %v", rep, err)
	}
	wantEvents(t, r.a.ev, "vmm-restore", "journal-restore-1")
}

// A VMM without restore (QEMU with vhost-user-vsock) fails with
// Unimplemented naming it, before touching anything.
func TestRestoreUnsupportedByQEMU(t *testing.T) {
	ev := &events{path: filepath.Join(t.TempDir(), "events")}
	sb := lifecycle.New(lifecycle.Config{ID: "sb1", VMM: vmm.NewQEMU("vm1", nil), Journal: newJournal(ev)})
	for name, f := range map[string]func() error{
		"restore": func() error {
			_, err := sb.Restore(context.Background(), lifecycle.RestoreOptions{Path: "/s"})
			return err
		},
		"fork": func() error {
			_, err := sb.Fork(context.Background(), lifecycle.RestoreOptions{Path: "/s"})
			return err
		},
	} {
		err := f()
		if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "vmm qemu") || !strings.Contains(err.Error(), "vhost-user-vsock") || !strings.Contains(err.Error(), name) {
			t.Errorf("%s with QEMU: %v", name, err)
		}
	}
	if e := ev.list(); len(e) != 0 {
		t.Fatalf("journal touched: %q", e)
	}
}

// Fork: a restore into a new sandbox with a new identity; the hostname
// changes inside the agent's UTS namespace only.
func TestForkAppliesNewIdentity(t *testing.T) {
	r := newRig(t, true)
	ctx := ctxT(t)
	hostBefore, _ := os.Hostname()
	path := filepath.Join(t.TempDir(), "snap")
	if _, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: path}); err != nil {
		t.Fatal(err)
	}
	child := lifecycle.New(lifecycle.Config{ID: "sb2", Agent: r.agent, VMM: r.vmm, Journal: r.j})
	r.a.ev.reset()
	rep, err := child.Fork(ctx, lifecycle.RestoreOptions{Path: path, Generation: 1, Identity: &agentv1.SandboxIdentity{Hostname: "fork-1"}})
	if err != nil {
		t.Fatal(err)
	}
	wantEvents(t, r.a.ev, "vmm-restore", "journal-restore-1")
	if rep.Resume.Hostname != "fork-1" || rep.Resume.SandboxId != "sb2" || rep.Resume.Generation != 1 {
		t.Fatalf("fork resume %+v", rep.Resume)
	}
	res, err := r.agent.Start(ctx, &agentv1.StartRequest{Id: "hn", Command: "hostname"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, _, err := r.agent.CopyOutput(ctx, res.Status.Id, agentclient.Offsets{}, true, &out, &out); err != nil || out.String() != "fork-1\n" {
		t.Fatalf("hostname in the fork: %q %v", out.String(), err)
	}
	if h, _ := os.Hostname(); h != hostBefore {
		t.Fatalf("the host's hostname changed: %q -> %q", hostBefore, h)
	}
}

// Sleep pauses; concurrent Wakes resume exactly once (with a clock update);
// Pause is not undone by Wake; Checkpoint refuses a paused sandbox.
func TestSleepWakesOnce(t *testing.T) {
	r := newRig(t, false)
	ctx := ctxT(t)
	if err := r.sb.Sleep(ctx); err != nil {
		t.Fatal(err)
	}
	if r.sb.State() != lifecycle.Asleep {
		t.Fatalf("state %v", r.sb.State())
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- r.sb.Wake(ctx) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantEvents(t, r.a.ev, "vmm-pause", "vmm-resume")
	if r.sb.State() != lifecycle.Running {
		t.Fatalf("state after wake %v", r.sb.State())
	}
	if err := r.sb.Wake(ctx); err != nil { // running: nothing to do
		t.Fatal(err)
	}

	// A sleeping sandbox is woken by a checkpoint too.
	if err := r.sb.Sleep(ctx); err != nil {
		t.Fatal(err)
	}
	r.a.ev.reset()
	if _, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{}); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, r.a.ev, "vmm-resume", "agent-freeze", "vmm-pause", "vmm-resume", "agent-thaw", "journal-bump-1")

	if err := r.sb.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.sb.Wake(ctx); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("wake of a paused sandbox: %v", err)
	}
	if err := r.sb.Sleep(ctx); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("sleep of a paused sandbox: %v", err)
	}
	if _, err := r.sb.Checkpoint(ctx, lifecycle.CheckpointOptions{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("checkpoint of a paused sandbox: %v", err)
	}
	rep, err := r.sb.Resume(ctx)
	if err != nil || rep.Was != lifecycle.Paused || rep.Agent == nil || rep.Agent.Generation != 1 || rep.Agent.EntropyBytes < 64 {
		t.Fatalf("resume: %+v %v", rep, err)
	}
	if r.sb.State() != lifecycle.Running {
		t.Fatalf("state after resume %v", r.sb.State())
	}
}

func itoa(n uint64) string { return strconvU(n) }
