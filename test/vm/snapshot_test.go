package vmtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/lifecycle"
	"github.com/sailbox/sailbox/host-supervisor/vm"
	"github.com/sailbox/sailbox/host-supervisor/vmm"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// snapVM is one booted VM with an ext4 data disk at /data, reached
// through a proxy in front of its hybrid vsock socket that can cut every
// connection at once (what a snapshot does to vsock).
type snapVM struct {
	v     *vm.VM
	dir   string
	disk  string
	proxy *vsockProxy
	addr  string // the agent through the proxy
}

// bootSnapVM builds an initramfs with the disk modules and boots it with
// a fresh 64 MiB data disk.
func bootSnapVM(t *testing.T) *snapVM {
	t.Helper()
	testcap.Root(t)
	testcap.Command(t, "qemu-system-aarch64")
	testcap.Command(t, "apt-get")
	testcap.Command(t, "dpkg-deb")
	testcap.Command(t, "mkfs.ext4")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f := &vm.Fetcher{}
	k, err := f.Kernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := f.Busybox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	initBin, agentBin := filepath.Join(bin, "imageinit"), filepath.Join(bin, "guest-agent")
	if err := vm.BuildArm64(ctx, "github.com/sailbox/sailbox/imageinit", initBin); err != nil {
		t.Fatal(err)
	}
	if err := vm.BuildArm64(ctx, "github.com/sailbox/sailbox/guest-agent", agentBin); err != nil {
		t.Fatal(err)
	}
	s := &snapVM{dir: t.TempDir()}
	initramfs := filepath.Join(bin, "snap.cpio")
	mods := append(append(append([]string{}, vm.VsockModules...), vm.AgentModules...), vm.DiskModules...)
	if err := vm.BuildInitramfs(initramfs, vm.Image{Init: initBin, Agent: agentBin, Busybox: bb, Kernel: k, Modules: mods, Hostname: "snap"}); err != nil {
		t.Fatal(err)
	}
	s.disk = filepath.Join(bin, "data.ext4")
	if err := vm.MakeDataDisk(ctx, s.disk, 64, ""); err != nil {
		t.Fatal(err)
	}
	s.v, err = vm.Start(ctx, vm.Config{Name: "snap", Dir: s.dir, Kernel: k, Initramfs: initramfs, DataDisk: s.disk, NewVsock: vm.DefaultVsock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.v.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(s.dir, "console.log"))
			t.Logf("console:\n%s", b)
		}
	})
	if _, err := s.v.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	s.proxy = newVsockProxy(t, s.v.VsockPath())
	s.addr = fmt.Sprintf("hvsock://%s:%d", s.proxy.path, vm.AgentPort)
	return s
}

func (s *snapVM) client(t *testing.T) *agentclient.Client {
	t.Helper()
	c, err := agentclient.New(s.addr, agentOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// vsockProxy forwards the hybrid vsock socket and cuts every open
// connection on ResetAll.
type vsockProxy struct {
	path  string
	mu    sync.Mutex
	pairs map[net.Conn]net.Conn
}

func newVsockProxy(t *testing.T, target string) *vsockProxy {
	t.Helper()
	p := &vsockProxy{path: filepath.Join(t.TempDir(), "proxy.vsock"), pairs: map[net.Conn]net.Conn{}}
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

// ResetAll cuts every open connection and returns how many there were.
func (p *vsockProxy) ResetAll() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.pairs)
	for c, up := range p.pairs {
		c.Close()
		up.Close()
		delete(p.pairs, c)
	}
	return n
}

// memJournal journals nothing (the daemon is not in this test): it keeps
// the generation in memory and records the calls.
type memJournal struct {
	mu    sync.Mutex
	gen   uint64
	calls []string
}

func (j *memJournal) Generation(string) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.gen, nil
}
func (j *memJournal) BumpGeneration(string) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.gen++
	j.calls = append(j.calls, fmt.Sprintf("bump-%d", j.gen))
	return j.gen, nil
}
func (j *memJournal) RestoreGeneration(_ string, g uint64) ([]string, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.gen = g
	j.calls = append(j.calls, fmt.Sprintf("restore-%d", g))
	return nil, nil
}

// TestVMSnapshotLifecycle boots one VM with an ext4 data disk and runs the
// snapshot lifecycle against it: freeze/thaw of /data with a writer
// blocked in between, a checkpoint through QEMU (pause/resume: snapshots
// are unsupported with vhost-user-vsock), pause/resume across a running
// exec with every vsock connection cut while paused, sleep/wake, and a
// Resume with a new hostname and the clock one hour ahead (inside the VM).
func TestVMSnapshotLifecycle(t *testing.T) {
	start := time.Now()
	s := bootSnapVM(t)
	booted := time.Since(start)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := s.client(t)
	// Whatever happens, never leave /data frozen (the guest's watchdog
	// would thaw it within 60 s anyway).
	t.Cleanup(func() {
		tctx, tcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer tcancel()
		c.Thaw(tctx, &agentv1.ThawRequest{})
	})
	if r, err := run(ctx, c, &agentv1.StartRequest{Command: "grep ' /data ' /proc/mounts"}); err != nil || !strings.Contains(r.stdout, "ext4") {
		t.Fatalf("/data is not the ext4 disk: %+v %v", r, err)
	}
	q := vmm.NewQEMU("snap", s.v.QMP())
	j := &memJournal{}
	sb := lifecycle.New(lifecycle.Config{ID: "snap", Agent: c, VMM: q, Journal: j})

	t.Run("freeze-thaw-data", func(t *testing.T) {
		fr, err := c.Freeze(ctx, &agentv1.FreezeRequest{WatchdogMs: 30000})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(fr.Frozen, "/data") {
			t.Fatalf("frozen %q, skipped %v: /data not frozen", fr.Frozen, fr.Skipped)
		}
		// A writer blocks on the frozen filesystem...
		if _, err := c.Start(ctx, &agentv1.StartRequest{Id: "writer", Command: "echo frozen-write > /data/f && sync && echo written"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		st, err := c.Get(ctx, "writer")
		if err != nil || st.State != agentv1.ExecState_EXEC_STATE_RUNNING {
			t.Fatalf("writer while frozen: %+v %v (want running, blocked)", st, err)
		}
		fs, err := c.FreezeStatus(ctx, &agentv1.FreezeStatusRequest{})
		if err != nil || !fs.Frozen || !slices.Contains(fs.Mounts, "/data") {
			t.Fatalf("freeze status %+v %v", fs, err)
		}
		// ...and proceeds after the thaw; the data is there.
		tr, err := c.Thaw(ctx, &agentv1.ThawRequest{})
		if err != nil || !tr.WasFrozen || !slices.Contains(tr.Thawed, "/data") {
			t.Fatalf("thaw %+v %v", tr, err)
		}
		var out bytes.Buffer
		st, _, err = c.CopyOutput(ctx, "writer", agentclient.Offsets{}, true, &out, &out)
		if err != nil || st.ExitCode != 0 || out.String() != "written\n" {
			t.Fatalf("writer after thaw: %q %+v %v", out.String(), st, err)
		}
		if r, err := run(ctx, c, &agentv1.StartRequest{Command: "cat /data/f"}); err != nil || r.stdout != "frozen-write\n" {
			t.Fatalf("data after thaw: %+v %v", r, err)
		}
		t.Logf("frozen %v for %v", tr.Thawed, time.Duration(tr.FrozenForNs).Round(time.Millisecond))
	})

	t.Run("checkpoint-qemu", func(t *testing.T) {
		if !strings.Contains(q.Capabilities().String(), "qemu: pause resume") {
			t.Fatalf("capabilities %s", q.Capabilities())
		}
		// A writer keeps writing to /data through the checkpoint; the disk
		// copied while quiesced must still be a clean filesystem.
		if _, err := c.Start(ctx, &agentv1.StartRequest{Id: "churn", Command: "i=0; while [ $i -lt 400 ]; do echo $i > /data/churn.$((i % 20)); i=$((i+1)); done; sync"}); err != nil {
			t.Fatal(err)
		}
		diskCopy := filepath.Join(t.TempDir(), "data-copy.ext4")
		copyDisk := func(ctx context.Context) error {
			b, err := os.ReadFile(s.disk)
			if err != nil {
				return err
			}
			return os.WriteFile(diskCopy, b, 0o644)
		}
		rep, err := sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: filepath.Join(s.dir, "snap"), WhileQuiesced: copyDisk})
		if err != nil {
			t.Fatal(err)
		}
		if fsck, err := exec.LookPath("e2fsck"); err == nil {
			if out, err := exec.Command(fsck, "-fn", diskCopy).CombinedOutput(); err != nil {
				t.Fatalf("e2fsck of the disk copied during the checkpoint: %v\n%s", err, out)
			}
		}
		if debugfs, err := exec.LookPath("debugfs"); err == nil {
			out, err := exec.Command(debugfs, "-R", "cat /f", diskCopy).Output()
			if err != nil || string(out) != "frozen-write\n" {
				t.Fatalf("/f in the disk copy: %q %v", out, err)
			}
		}
		if st, err := c.Wait(ctx, "churn"); err != nil || st.ExitCode != 0 {
			t.Fatalf("writer across the checkpoint: %+v %v", st, err)
		}
		if rep.Generation != 1 || !rep.Paused || rep.Snapshot != "" || !slices.Contains(rep.Frozen, "/data") {
			t.Fatalf("checkpoint %+v", rep)
		}
		if st, err := q.Status(ctx); err != nil || !st.Running {
			t.Fatalf("VM after checkpoint: %+v %v", st, err)
		}
		if fs, err := c.FreezeStatus(ctx, &agentv1.FreezeStatusRequest{}); err != nil || fs.Frozen {
			t.Fatalf("still frozen after checkpoint: %+v %v", fs, err)
		}
		t.Logf("checkpoint (freeze, QMP stop/cont, thaw): freeze %v, vmm %v, thaw %v", rep.Freeze, rep.VMM, rep.Thaw)
		// QEMU itself says why it cannot snapshot this VM, and the error
		// passes that on.
		b, err := q.MigrationBlockers(ctx)
		if err != nil || !strings.Contains(strings.Join(b, " "), "vhost-user-vsock") {
			t.Fatalf("QEMU's migration blockers: %q %v", b, err)
		}
		if err := q.Snapshot(ctx, filepath.Join(s.dir, "snap")); status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "QEMU says: ") {
			t.Fatalf("QEMU snapshot: %v", err)
		} else {
			t.Logf("snapshot: %v", err)
		}
		_, err = sb.Restore(ctx, lifecycle.RestoreOptions{Path: filepath.Join(s.dir, "snap")})
		if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "vhost-user-vsock") {
			t.Fatalf("restore with QEMU: %v", err)
		}
	})

	t.Run("pause-resume-across-exec", func(t *testing.T) {
		streamer := s.client(t)
		const n = 40
		var want strings.Builder
		for i := 1; i <= n; i++ {
			fmt.Fprintf(&want, "line %d\n", i)
		}
		if _, err := streamer.Start(ctx, &agentv1.StartRequest{Id: "across", Command: fmt.Sprintf(`for i in $(seq 1 %d); do echo "line $i"; sleep 0.05; done`, n)}); err != nil {
			t.Fatal(err)
		}
		var out syncBuffer
		type res struct {
			st  *agentv1.ExecStatus
			err error
		}
		done := make(chan res, 1)
		go func() {
			st, _, err := streamer.CopyOutput(ctx, "across", agentclient.Offsets{}, true, &out, &out)
			done <- res{st, err}
		}()
		for out.Len() < 60 {
			select {
			case x := <-done:
				t.Fatalf("exec ended before the pause: %+v", x)
			case <-time.After(10 * time.Millisecond):
			}
		}
		if err := sb.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		at := out.Len()
		cut := s.proxy.ResetAll() // as a snapshot resets vsock
		time.Sleep(time.Second)
		rep, err := sb.Resume(ctx)
		if err != nil {
			t.Fatal(err)
		}
		x := <-done
		if x.err != nil || x.st.ExitCode != 0 || out.String() != want.String() {
			t.Fatalf("exec across pause/resume: %+v %v; output %d bytes, want %d", x.st, x.err, out.Len(), want.Len())
		}
		if cut < 2 || at >= want.Len() {
			t.Fatalf("connections cut %d (want both clients), output at pause %d of %d", cut, at, want.Len())
		}
		t.Logf("paused at byte %d of %d, %d connections cut; resume: guest clock off by %v (stepped %v)",
			at, want.Len(), cut, time.Duration(rep.Agent.ClockOffsetNs).Round(time.Millisecond), rep.Agent.ClockStepped)

		// Sleep: the next exec wakes it (the daemon calls Wake first).
		if err := sb.Sleep(ctx); err != nil {
			t.Fatal(err)
		}
		if st, err := q.Status(ctx); err != nil || st.Status != "paused" {
			t.Fatalf("asleep: %+v %v", st, err)
		}
		if err := sb.Wake(ctx); err != nil {
			t.Fatal(err)
		}
		if r, err := run(ctx, c, &agentv1.StartRequest{Command: "echo awake"}); err != nil || r.stdout != "awake\n" {
			t.Fatalf("exec after wake: %+v %v", r, err)
		}
	})

	t.Run("resume-identity-clock", func(t *testing.T) {
		ahead := time.Now().Add(time.Hour)
		req, err := lifecycle.NewResumeRequest(7, &agentv1.SandboxIdentity{Hostname: "forked-vm", SandboxId: "sb-fork"})
		if err != nil {
			t.Fatal(err)
		}
		req.HostTimeUnixNano = ahead.UnixNano() // only inside the VM
		resp, err := c.Resume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if !resp.ClockStepped || resp.Hostname != "forked-vm" || resp.SandboxId != "sb-fork" || resp.Generation != 7 || !resp.CrngReseeded {
			t.Fatalf("resume %+v", resp)
		}
		r, err := run(ctx, c, &agentv1.StartRequest{Command: "hostname; date +%s"})
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(r.stdout)
		if len(f) != 2 || f[0] != "forked-vm" {
			t.Fatalf("hostname; date: %q", r.stdout)
		}
		guest, _ := strconv.ParseInt(f[1], 10, 64)
		if d := time.Duration(guest-time.Now().Add(time.Hour).Unix()) * time.Second; d.Abs() > time.Minute {
			t.Fatalf("guest clock %d is %v off host+1h", guest, d)
		}
		if h, _ := os.Hostname(); h == "forked-vm" {
			t.Fatal("the host's hostname changed")
		}
		t.Logf("guest clock was %v off before, now host+1h; hostname %s", time.Duration(resp.ClockOffsetNs).Round(time.Millisecond), f[0])
	})

	// Power off cleanly; the disk must be a clean ext4 with the data.
	clean, err := s.v.Shutdown(ctx, 20*time.Second)
	if !clean || err != nil {
		t.Fatalf("shutdown: clean=%v %v", clean, err)
	}
	if fsck, err := exec.LookPath("e2fsck"); err == nil {
		if out, err := exec.Command(fsck, "-fn", s.disk).CombinedOutput(); err != nil {
			t.Errorf("e2fsck of the data disk: %v\n%s", err, out)
		}
	}
	t.Logf("boot %v, whole test %v", booted.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// syncBuffer is a bytes.Buffer safe for one writer and a concurrent Len.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	n  atomic.Int64
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	s.n.Add(int64(n))
	return n, err
}
func (s *syncBuffer) Len() int { return int(s.n.Load()) }
func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
