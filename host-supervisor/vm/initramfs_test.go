package vm

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
)

// TestWriteInitramfs reads the archive back: parents before children, the
// binaries byte for byte, symlinks, and the module list in load order.
func TestWriteInitramfs(t *testing.T) {
	k := testKernel(t)
	dir := t.TempDir()
	initBin := filepath.Join(dir, "init")
	os.WriteFile(initBin, []byte("\x7fELF fake init"), 0o755)
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, bytes.Repeat([]byte("a"), 12345), 0o755)
	var buf bytes.Buffer
	err := WriteInitramfs(&buf, Image{Init: initBin, Agent: agent, Busybox: agent, Kernel: k, Modules: VsockModules, Hostname: "box"})
	if err != nil {
		t.Fatal(err)
	}
	r := cpio.NewReader(&buf)
	seen := map[string]*cpio.Header{}
	data := map[string]string{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if parent := filepath.Dir(h.Name); parent != "." && seen[parent] == nil {
			t.Errorf("%s comes before its directory %s", h.Name, parent)
		}
		if seen[h.Name] != nil {
			t.Errorf("%s twice", h.Name)
		}
		seen[h.Name] = h
		b, _ := io.ReadAll(r)
		data[h.Name] = string(b)
	}
	if data["init"] != "\x7fELF fake init" || seen["init"].Mode&0o777 != 0o755 {
		t.Errorf("init: %q mode %o", data["init"], seen["init"].Mode)
	}
	if len(data["usr/bin/guest-agent"]) != 12345 {
		t.Errorf("agent: %d bytes", len(data["usr/bin/guest-agent"]))
	}
	if h := seen["bin/sh"]; h == nil || h.Mode&cpio.ModeType != cpio.TypeSymlink || h.Linkname != "busybox" {
		t.Errorf("bin/sh: %+v", h)
	}
	if seen["tmp"].Mode&0o7777 != 0o1777 {
		t.Errorf("tmp mode %o", seen["tmp"].Mode)
	}
	if data["etc/hostname"] != "box\n" {
		t.Errorf("hostname %q", data["etc/hostname"])
	}
	list := strings.Fields(data["etc/sailbox/modules"])
	if len(list) < 5 || !strings.HasSuffix(list[len(list)-1], "/vmw_vsock_virtio_transport.ko") {
		t.Fatalf("module list %q", list)
	}
	for _, m := range list {
		if seen[strings.TrimPrefix(m, "/")] == nil {
			t.Errorf("listed module %s is not in the archive", m)
		}
	}
}
