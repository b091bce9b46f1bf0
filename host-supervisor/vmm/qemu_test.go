package vmm

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// startQEMU runs an empty arm64 machine (no kernel: the vCPU spins on
// zeros) with a QMP socket; enough to drive stop/cont for real.
func startQEMU(t *testing.T) string {
	t.Helper()
	bin := testcap.Command(t, "qemu-system-aarch64")
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(bin, "-M", "virt", "-cpu", "cortex-a72", "-accel", "tcg", "-m", "64",
		"-nodefaults", "-display", "none", "-qmp", "unix:"+sock+",server=on,wait=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return sock
}

func TestQEMUPauseResume(t *testing.T) {
	sock := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, closeQMP, err := DialQEMU(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer closeQMP()
	for i := 0; i < 2; i++ { // twice: both are idempotent
		if err := q.Pause(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := q.Status(ctx); err != nil || st.Running || st.Status != "paused" {
		t.Fatalf("after pause: %+v %v", st, err)
	}
	for i := 0; i < 2; i++ {
		if err := q.Resume(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := q.Status(ctx); err != nil || !st.Running {
		t.Fatalf("after resume: %+v %v", st, err)
	}
	// No unmigratable device here: QEMU reports no blockers.
	if b, err := q.MigrationBlockers(ctx); err != nil || len(b) != 0 {
		t.Fatalf("migration blockers of an empty machine: %q %v", b, err)
	}
}

func TestQEMUSnapshotUnsupported(t *testing.T) {
	q := NewQEMU("vm1", nil) // never reaches QMP
	caps := q.Capabilities()
	if !caps.Pause || !caps.Resume || caps.Snapshot || caps.Restore || !strings.Contains(caps.Why, "vhost-user-vsock") {
		t.Fatalf("capabilities %+v", caps)
	}
	if s := caps.String(); !strings.HasPrefix(s, "qemu: pause resume (") {
		t.Errorf("capabilities string %q", s)
	}
	for name, err := range map[string]error{
		"snapshot": q.Snapshot(context.Background(), "/snap/x"),
		"restore":  q.Restore(context.Background(), "/snap/x"),
	} {
		s, _ := status.FromError(err)
		if s.Code() != codes.Unimplemented || !strings.Contains(s.Message(), "vmm qemu (vm1)") ||
			!strings.Contains(s.Message(), name) || !strings.Contains(s.Message(), "/snap/x") || !strings.Contains(s.Message(), "vhost-user-vsock") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestQEMUUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, _, err := DialQEMU(ctx, filepath.Join(t.TempDir(), "none.sock"))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("dial a missing QMP socket: %v", err)
	}
}
