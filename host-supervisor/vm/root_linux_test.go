package vm

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
)

// TestRootDisk boots from an ext4 root image laid out as rootfs's builder
// lays them out (/sbin/init, /usr/bin/guest-agent, /etc/sailbox/env): the
// initramfs's imageinit switches to it, the disk's imageinit starts the
// disk's agent with the image environment, and the image is unchanged
// afterwards (snapshot=on).
func TestRootDisk(t *testing.T) {
	needVM(t)
	testcap.Command(t, "mkfs.ext4")
	testcap.Command(t, "debugfs")
	k := testKernel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root, disk := makeRootImage(t, ctx)
	dir := t.TempDir()
	// The initramfs has imageinit and the modules only: no agent.
	initrd := filepath.Join(dir, "initrd.cpio")
	mods := append(append(append([]string{}, VsockModules...), AgentModules...), DiskModules...)
	if err := BuildInitramfs(initrd, Image{Init: filepath.Join(root, "sbin/init"), Kernel: k, Modules: mods}); err != nil {
		t.Fatal(err)
	}
	v, err := Start(ctx, Config{Name: "root", Dir: dir, Kernel: k, Initramfs: initrd, RootDisk: disk, NewVsock: DefaultVsock})
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
	c, _ := agentclient.New(v.AgentAddr(), agentclient.Options{Dial: transport.DialOptions{MaxBackoff: 50 * time.Millisecond}})
	defer c.Close()
	cmd := `echo $SAILBOX_IMAGE_VAR; grep ' / ' /proc/mounts | cut -d' ' -f1,3; test -e /init && echo on-initramfs || echo on-disk; echo x > /written-in-guest`
	if _, err := c.Start(ctx, &agentv1.StartRequest{Id: "root", Command: cmd}); err != nil {
		t.Fatal(err)
	}
	var o, e bytes.Buffer
	st, _, err := c.CopyOutput(ctx, "root", agentclient.Offsets{}, true, &o, &e)
	want := "from-root-disk\n/dev/vda ext4\non-disk\n"
	if err != nil || st.ExitCode != 0 || o.String() != want {
		t.Fatalf("in the guest: %q (stderr %q) %v %v; want %q", o.String(), e.String(), st, err, want)
	}
	if clean, err := v.Shutdown(ctx, 20*time.Second); !clean {
		t.Fatalf("shutdown: %v", err)
	}
	out, err := exec.Command("debugfs", "-R", "stat /written-in-guest", disk).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("File not found")) {
		t.Errorf("the root image changed (snapshot=on should keep it): %v\n%s", err, out)
	}
}

// makeRootImage lays out a minimal bootable root as rootfs's builder does
// and writes it as an ext4 image; it returns the tree and the image.
func makeRootImage(t *testing.T, ctx context.Context) (root, disk string) {
	t.Helper()
	bb, err := (&Fetcher{}).Busybox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	root = t.TempDir()
	for _, d := range []string{"sbin", "usr/bin", "bin", "etc/sailbox", "proc", "sys", "dev", "run", "tmp"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	bin := guestBinaries(t)
	copyFile(t, filepath.Join(bin, "imageinit"), filepath.Join(root, "sbin/init"))
	copyFile(t, filepath.Join(bin, "guest-agent"), filepath.Join(root, "usr/bin/guest-agent"))
	b, _ := os.ReadFile(bb)
	os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755)
	for _, a := range busyboxApplets {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	os.WriteFile(filepath.Join(root, "etc/sailbox/env"), []byte("SAILBOX_IMAGE_VAR=from-root-disk\n"), 0o644)
	disk = filepath.Join(t.TempDir(), "root.ext4")
	if err := MakeDataDisk(ctx, disk, 64, root); err != nil {
		t.Fatal(err)
	}
	return root, disk
}

// TestRunUpImage is `vm up --image`: the agent answering comes from the
// image, with the image's environment.
func TestRunUpImage(t *testing.T) {
	needVM(t)
	testcap.Command(t, "mkfs.ext4")
	testKernel(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root, disk := makeRootImage(t, ctx)
	upCtx, stop := context.WithCancel(ctx)
	defer stop()
	var stdout, stderr lockedBuf
	done := make(chan int, 1)
	go func() {
		done <- RunUp(upCtx, []string{"--name", "imgtest", "--dir", t.TempDir(), "--init", filepath.Join(root, "sbin/init"),
			"--agent", "/nonexistent", "--image", disk, "--quiet"}, &stdout, &stderr)
	}()
	addr := waitAgentLine(t, &stdout, &stderr, done)
	c, _ := agentclient.New(addr, agentclient.Options{Dial: transport.DialOptions{MaxBackoff: 50 * time.Millisecond}})
	defer c.Close()
	if _, err := c.Start(ctx, &agentv1.StartRequest{Id: "v", Command: "echo $SAILBOX_IMAGE_VAR; hostname"}); err != nil {
		t.Fatal(err)
	}
	var o, e bytes.Buffer
	if st, _, err := c.CopyOutput(ctx, "v", agentclient.Offsets{}, true, &o, &e); err != nil || st.ExitCode != 0 || o.String() != "from-root-disk\nimgtest\n" {
		t.Fatalf("exec: %q %q %v", o.String(), e.String(), err)
	}
	stop()
	select {
	case rc := <-done:
		if rc != 0 {
			t.Fatalf("RunUp: %d\n%s", rc, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("RunUp did not return")
	}
}

func TestCheckImageKernel(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "rootfs.ext4")
	k := Kernel{Release: "6.1.0-56-arm64"}
	if err := checkImageKernel(img, k); err != nil {
		t.Fatalf("no manifest: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "image.json"), []byte(`{"kernel":{"release":"6.1.0-56-arm64"}}`), 0o644)
	if err := checkImageKernel(img, k); err != nil {
		t.Fatalf("same release: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "image.json"), []byte(`{"kernel":{"release":"6.1.0-99-arm64"}}`), 0o644)
	if err := checkImageKernel(img, k); err == nil || !strings.Contains(err.Error(), "6.1.0-99-arm64") {
		t.Fatalf("other release: %v", err)
	}
}
