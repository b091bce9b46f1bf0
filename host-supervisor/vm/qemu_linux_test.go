package vm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/imageinit/pid1"
	"github.com/sailbox/sailbox/internal/testcap"
)

// bootImage builds an initramfs with imageinit (and no agent) for kernel k.
func bootImage(t testing.TB, k Kernel, mods []string) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	initBin := filepath.Join(guestBinaries(t), "imageinit")
	bb, err := (&Fetcher{}).Busybox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initramfs.cpio")
	if err := BuildInitramfs(out, Image{Init: initBin, Busybox: bb, Kernel: k, Modules: mods}); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBootBareInit boots the real arm64 kernel to imageinit with
// sailbox.bootonly: it mounts, loads the vsock modules and powers off, and
// QEMU exits by itself (-no-reboot).
func TestBootBareInit(t *testing.T) {
	needVM(t)
	k := testKernel(t)
	img := bootImage(t, k, VsockModules)
	var console strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	v, err := Start(ctx, Config{Name: "bare", Dir: t.TempDir(), Kernel: k, Initramfs: img,
		Cmdline: []string{"sailbox.bootonly", "sailbox.agent=none"}, Console: &console})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Kill)
	ready, err := v.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Wait(ctx); err != nil {
		t.Fatalf("qemu: %v\n%s", err, console.String())
	}
	out := console.String()
	t.Logf("bare imageinit boot: ready %v after QEMU start, QEMU exited after %v", ready, time.Since(v.Started()))
	for _, want := range []string{pid1.ReadyMarker, pid1.PoweroffMarker, "reboot: Power down"} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "finit_module") || strings.Contains(out, "level=WARN") {
		t.Errorf("imageinit warned during boot:\n%s", out)
	}
}

// TestQMP boots a VM that stays up (no agent) and drives it through QMP.
func TestQMP(t *testing.T) {
	needVM(t)
	k := testKernel(t)
	img := bootImage(t, k, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	v, err := Start(ctx, Config{Name: "qmp", Dir: dir, Kernel: k, Initramfs: img, Cmdline: []string{"sailbox.agent=none"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Kill)
	if _, err := v.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(ctx, Config{Name: "qmp2", Dir: dir, Kernel: k, Initramfs: img}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a second VM in the same run directory: %v", err)
	}
	q := v.QMP()
	st, err := q.QueryStatus(ctx)
	if err != nil || !st.Running || st.Status != "running" {
		t.Fatalf("query-status: %+v %v", st, err)
	}
	if err := q.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := q.QueryStatus(ctx); err != nil || st.Running || st.Status != "paused" {
		t.Fatalf("after stop: %+v %v", st, err)
	}
	if err := q.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := q.QueryStatus(ctx); err != nil || !st.Running {
		t.Fatalf("after cont: %+v %v", st, err)
	}
	if _, err := q.Execute(ctx, "no-such-command", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Errorf("unknown command: %v", err)
	}
	// No vsock device: the clean path is unavailable, Shutdown falls back to quit.
	clean, err := v.Shutdown(ctx, time.Second)
	if clean || err == nil {
		t.Errorf("shutdown without vsock: clean=%v err=%v", clean, err)
	}
	select {
	case <-v.Done():
	default:
		t.Fatal("QEMU still running after Shutdown")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "console.log")); !strings.Contains(string(b), pid1.ReadyMarker) {
		t.Errorf("console.log lacks the ready marker")
	}
}

// TestCleanPoweroffOverVsock boots with the vhost-user-vsock backend and no
// agent, and powers off through imageinit's control port over the hybrid
// socket: QEMU must exit by itself.
func TestCleanPoweroffOverVsock(t *testing.T) {
	needVM(t)
	k := testKernel(t)
	img := bootImage(t, k, VsockModules)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var console strings.Builder
	v, err := Start(ctx, Config{Name: "poweroff", Dir: t.TempDir(), Kernel: k, Initramfs: img,
		Cmdline: []string{"sailbox.agent=none"}, NewVsock: DefaultVsock, Console: &console})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Kill)
	if _, err := v.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	clean, err := v.Shutdown(ctx, 20*time.Second)
	if !clean || err != nil {
		t.Fatalf("shutdown: clean=%v err=%v\n%s", clean, err, console.String())
	}
	if err := v.Wait(ctx); err != nil {
		t.Fatalf("qemu exit: %v", err)
	}
	if !strings.Contains(console.String(), `reason="control port"`) || !strings.Contains(console.String(), pid1.PoweroffMarker) {
		t.Errorf("console:\n%s", console.String())
	}
}

// TestStartFailsClearly: a QEMU that cannot start (no such kernel) fails
// Start with QEMU's own message and leaves no process.
func TestStartFailsClearly(t *testing.T) {
	needVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	_, err := Start(ctx, Config{Name: "broken", Dir: dir, Kernel: Kernel{Image: filepath.Join(dir, "no-such-Image")},
		Initramfs: filepath.Join(dir, "no-such-initrd"), NewVsock: DefaultVsock})
	if err == nil || !strings.Contains(err.Error(), "no-such-") {
		t.Fatalf("want an error naming the missing file, got %v", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, "vm.vsock")); serr == nil {
		t.Errorf("hybrid socket left behind after a failed start")
	}
}

// needVM skips VM boots under -short (make test-short) and requires QEMU.
func needVM(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM; not in -short")
	}
	testcap.Command(t, "qemu-system-aarch64")
}
