package vsockbackend

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
	"github.com/sailbox/sailbox/protocol/transport"
)

// cpioNewc writes a newc archive.
type cpioNewc struct {
	buf bytes.Buffer
	ino int
}

func (w *cpioNewc) add(name string, mode uint32, data []byte, rdevMajor, rdevMinor int) {
	w.ino++
	fmt.Fprintf(&w.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	w.buf.WriteString(name)
	w.buf.WriteByte(0)
	w.pad()
	w.buf.Write(data)
	w.pad()
}

func (w *cpioNewc) pad() {
	for w.buf.Len()%4 != 0 {
		w.buf.WriteByte(0)
	}
}

func (w *cpioNewc) bytes() []byte {
	w.add("TRAILER!!!", 0, nil, 0, 0)
	return w.buf.Bytes()
}

// BenchmarkInVM boots a real arm64 Linux guest under QEMU TCG with this
// back end as its vsock device and measures through the hybrid socket.
// It needs a Debian arm64 kernel Image and its module tree:
//
//	SAILBOX_VSOCK_KERNEL=.../boot/vmlinuz-6.1.0-56-arm64
//	SAILBOX_VSOCK_MODULES=.../lib/modules/6.1.0-56-arm64
//
// SAILBOX_VSOCK_MMIO=1 uses vhost-user-vsock-device on virtio-mmio (a
// legacy device: no VERSION_1, 1024-entry rings) instead of PCI.
func BenchmarkInVM(b *testing.B) {
	kernel, mods := os.Getenv("SAILBOX_VSOCK_KERNEL"), os.Getenv("SAILBOX_VSOCK_MODULES")
	if kernel == "" || mods == "" {
		b.Skip("set SAILBOX_VSOCK_KERNEL and SAILBOX_VSOCK_MODULES to boot a real guest")
	}
	qemu := testcap.Command(b, "qemu-system-aarch64")
	dir := b.TempDir()
	initBin := filepath.Join(dir, "init")
	build := exec.Command("go", "build", "-o", initBin, "./testdata/guestinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH=arm64")
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build guest init: %v\n%s", err, out)
	}
	var cp cpioNewc
	for _, d := range []string{"dev", "proc", "sys", "modules"} {
		cp.add(d, 0o040755, nil, 0, 0)
	}
	cp.add("dev/console", 0o020600, nil, 5, 1)
	data, _ := os.ReadFile(initBin)
	cp.add("init", 0o100755, data, 0, 0)
	var list []string
	for _, m := range []string{"drivers/virtio/virtio_mmio.ko", "drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci_modern_dev.ko", "drivers/virtio/virtio_pci.ko",
		"net/vmw_vsock/vsock.ko", "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", "net/vmw_vsock/vmw_vsock_virtio_transport.ko"} {
		data, err := os.ReadFile(filepath.Join(mods, "kernel", m))
		if err != nil {
			b.Fatal(err)
		}
		name := "modules/" + filepath.Base(m)
		cp.add(name, 0o100644, data, 0, 0)
		list = append(list, "/"+name)
	}
	cp.add("modules.list", 0o100644, []byte(strings.Join(list, "\n")), 0, 0)
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := os.WriteFile(initrd, cp.bytes(), 0o644); err != nil {
		b.Fatal(err)
	}

	e := startBackend(b)
	hostLn, err := net.Listen("unix", e.cfg.HybridSocket+"_5000")
	if err != nil {
		b.Fatal(err)
	}
	defer hostLn.Close()
	go func() {
		for {
			c, err := hostLn.Accept()
			if err != nil {
				return
			}
			bufio.NewReader(c).ReadString('\n')
			io.WriteString(c, "hello from host\n")
			c.Close()
		}
	}()
	dev := "vhost-user-vsock-pci"
	if os.Getenv("SAILBOX_VSOCK_MMIO") != "" {
		dev = "vhost-user-vsock-device"
	}
	var console syncBuffer
	start := time.Now()
	cmd := exec.Command(qemu, "-M", "virt,memory-backend=mem", "-cpu", "cortex-a72", "-smp", "1", "-m", "512M", "-accel", "tcg",
		"-nographic", "-no-reboot", "-nic", "none", "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
		"-chardev", "socket,id=vvsock,path="+e.cfg.VhostUserSocket, "-device", dev+",chardev=vvsock",
		"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyAMA0 panic=-1 quiet")
	cmd.Stdout, cmd.Stderr = &console, &console
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		if b.Failed() || testing.Verbose() {
			b.Logf("console:\n%s", console.String())
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dial := func(port int) net.Conn {
		c, err := transport.Dial(ctx, fmt.Sprintf("hvsock://%s:%d", e.cfg.HybridSocket, port))
		if err != nil {
			b.Fatalf("dial guest port %d: %v", port, err)
		}
		return c
	}
	c := dial(10000)
	b.Logf("QEMU start to first hybrid connection: %v", time.Since(start).Round(time.Millisecond))
	msg := randBytes(1 << 20)
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		b.Fatalf("echo through the guest: %v", err)
	}
	c.Close()

	const n = 32 << 20
	b.Run("host-to-guest", func(b *testing.B) {
		b.SetBytes(n)
		for range b.N {
			c := dial(10001)
			go func() {
				c.Write(make([]byte, n))
				c.(*net.UnixConn).CloseWrite()
			}()
			line, err := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if got, _ := strconv.Atoi(strings.TrimSpace(line)); err != nil || got != n {
				b.Fatalf("guest counted %q, %v", line, err)
			}
		}
	})
	b.Run("guest-to-host", func(b *testing.B) {
		b.SetBytes(n)
		for range b.N {
			c := dial(10002)
			fmt.Fprintf(c, "%d\n", n)
			got, err := io.Copy(io.Discard, c)
			c.Close()
			if err != nil || got != n {
				b.Fatalf("read %d of %d from the guest: %v", got, n, err)
			}
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(console.String(), `host said "hello from host\n"`) {
		if time.Now().After(deadline) {
			b.Fatalf("the guest's connect to the host did not complete")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v := e.b.stats.BadChains.Load() + e.b.stats.BadPackets.Load(); v > 0 {
		b.Errorf("%d bad chains/packets from a real Linux guest", v)
	}
	// Power off: QEMU stops the rings (GET_VRING_BASE, which it waits
	// for) and exits; the back end sees the front end leave.
	dial(10003).Close()
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			b.Fatalf("QEMU after guest poweroff: %v", err)
		}
	case <-time.After(30 * time.Second):
		b.Fatal("QEMU did not exit after the guest powered off")
	}
	select {
	case err := <-e.serveC:
		e.serveC <- err
		if err != nil {
			b.Fatalf("Serve after QEMU exit: %v", err)
		}
	case <-time.After(10 * time.Second):
		b.Fatal("Serve did not return after QEMU exited")
	}
}
