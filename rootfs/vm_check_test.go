package rootfs

import (
	"bytes"
	"context"
	"fmt"
	"os"
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

// TestImageBootsInVM boots the built demo image as the real arm64 VM's
// root disk (QEMU TCG, the Debian kernel whose modules the image carries):
// imageinit on a modules-only initramfs mounts it and execs the image's own
// /sbin/init, which starts the image's agent with /etc/sailbox/env; then,
// through the agent, the image's curl runs and APP_ENV=demo is in the exec's
// environment.
func TestImageBootsInVM(t *testing.T) {
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
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.cpio")
	mods := append(append(append([]string{}, vm.VsockModules...), vm.AgentModules...), vm.DiskModules...)
	// Stage 1 only: no agent on the initramfs, the image brings its own.
	img := vm.Image{Init: filepath.Join(b.BinDir, "imageinit"), Kernel: k, Modules: mods}
	if err := vm.BuildInitramfs(initrd, img); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	// snapshot=on (not RootWritable): the cached image stays as built.
	v, err := vm.Start(ctx, vm.Config{Name: "rootfs", Dir: dir, Kernel: k, Initramfs: initrd, RootDisk: res.Path,
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
	c, err := agentclient.New(v.AgentAddr(), agentclient.Options{Dial: transport.DialOptions{MaxBackoff: 50 * time.Millisecond}, DialTimeout: 3 * time.Minute})
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
	out := run("curl", "curl --version")
	firstExec := time.Since(t0)
	if !strings.HasPrefix(out, "curl ") || !strings.Contains(out, "aarch64") {
		t.Fatalf("curl --version in the VM = %q", out)
	}
	t.Logf("in the VM (first exec %s after QEMU start): %s", firstExec.Round(time.Millisecond), strings.SplitN(out, "\n", 2)[0])
	if got := run("env", `echo "APP_ENV=$APP_ENV"; grep ' / ' /proc/mounts | cut -d' ' -f1,3`); got != "APP_ENV=demo\n/dev/vda ext4\n" {
		t.Fatalf("in the VM: %q, want APP_ENV=demo from the image's env file and / on /dev/vda", got)
	}
	ko := res.Kernel.Loaded[len(res.Kernel.Loaded)-1]
	run("ko", fmt.Sprintf("test -f %s && grep -q '\"digest\": \"%s\"' /etc/sailbox/image.json", ko, res.Digest))
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if clean, err := v.Shutdown(sctx, 20*time.Second); err != nil || !clean {
		t.Errorf("shutdown: clean=%v err=%v", clean, err)
	}
}
