package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/vm"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
)

// TestImageInVM attaches the built demo image to the real arm64 VM (QEMU
// TCG, the Debian kernel whose modules the image carries) as its virtio-blk
// disk, which imageinit mounts at /data, and runs the image's own curl
// there through the agent. Booting the image as the root disk (imageinit
// from the image as PID 1, the env file applied to execs) needs a root-disk
// mode in the VM driver; until then this checks that the ext4 mounts in the
// guest and its arm64 userland runs on the real kernel.
func TestImageInVM(t *testing.T) {
	_, b, res := demoImage(t)
	testcap.Command(t, "qemu-system-aarch64")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f := &vm.Fetcher{}
	k, err := f.Kernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kernel == nil || res.Kernel.Release != k.Release {
		t.Fatalf("image modules are for %+v, the VM boots %s", res.Kernel, k.Release)
	}
	bb, err := f.Busybox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.cpio")
	mods := append(append(append([]string{}, vm.VsockModules...), vm.AgentModules...), vm.DiskModules...)
	img := vm.Image{Init: filepath.Join(b.BinDir, "imageinit"), Agent: filepath.Join(b.BinDir, "guest-agent"),
		Busybox: bb, Kernel: k, Modules: mods, Hostname: "rootfs"}
	if err := vm.BuildInitramfs(initrd, img); err != nil {
		t.Fatal(err)
	}
	// The guest mounts the disk read-write: give it a copy.
	disk := filepath.Join(dir, "disk.ext4")
	if out, err := exec.Command("cp", "--sparse=always", res.Path, disk).CombinedOutput(); err != nil {
		t.Fatalf("copy image: %v: %s", err, out)
	}
	v, err := vm.Start(ctx, vm.Config{Name: "rootfs", Dir: dir, Kernel: k, Initramfs: initrd, DataDisk: disk,
		NewVsock: vm.DefaultVsock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
			t.Logf("console:\n%s", b)
		}
	})
	c, err := agentclient.New(v.AgentAddr(), agentclient.Options{Dial: transport.DialOptions{MaxBackoff: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	run := func(id, cmd string) string {
		t.Helper()
		if _, err := c.Start(ctx, &agentv1.StartRequest{Id: id, Command: cmd}); err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		var o, e bytes.Buffer
		st, _, err := c.CopyOutput(ctx, id, agentclient.Offsets{}, true, &o, &e)
		if err != nil {
			t.Fatalf("output %s: %v", id, err)
		}
		c.Release(ctx, id)
		if st.ExitCode != 0 {
			t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", cmd, st.ExitCode, o.String(), e.String())
		}
		return o.String()
	}
	out := run("curl", "busybox chroot /data /usr/bin/curl --version")
	if !strings.HasPrefix(out, "curl ") || !strings.Contains(out, "aarch64") {
		t.Fatalf("curl --version in the VM = %q", out)
	}
	t.Logf("in the VM: %s", strings.SplitN(out, "\n", 2)[0])
	env := run("env", "cat /data/etc/sailbox/env")
	if !strings.Contains(env, "\nAPP_ENV=demo\n") {
		t.Fatalf("env file in the VM = %q", env)
	}
	ko := res.Kernel.Loaded[len(res.Kernel.Loaded)-1]
	run("ko", fmt.Sprintf("test -f /data%s && test -x /data/sbin/init && test -x /data/usr/bin/guest-agent", ko))
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if clean, err := v.Shutdown(sctx, 20*time.Second); err != nil || !clean {
		t.Errorf("shutdown: clean=%v err=%v", clean, err)
	}
}
