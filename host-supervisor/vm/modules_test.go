package vm

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
)

func testKernel(t *testing.T) Kernel {
	t.Helper()
	testcap.Command(t, "apt-get")
	testcap.Command(t, "dpkg-deb")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := (&Fetcher{}).Kernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestModuleClosureOrder(t *testing.T) {
	k := testKernel(t)
	idx, err := IndexModules(k.ModDir)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := idx.ModuleClosure(append(append([]string{}, VsockModules...), DiskModules...)...)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(mods))
	for i, m := range mods {
		names[i] = modName(m)
	}
	t.Logf("load order: %v", names)
	before := func(a, b string) {
		ia, ib := slices.Index(names, a), slices.Index(names, b)
		if ia < 0 || ib < 0 || ia > ib {
			t.Errorf("%s (at %d) must load before %s (at %d)", a, ia, b, ib)
		}
	}
	before("vsock", "vmw_vsock_virtio_transport_common")
	before("vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport")
	before("virtio_pci_modern_dev", "virtio_pci")
	before("jbd2", "ext4")
	before("mbcache", "ext4")
	if len(slices.Compact(slices.Sorted(slices.Values(names)))) != len(names) {
		t.Errorf("duplicates in %v", names)
	}
	for _, m := range mods {
		if filepath.IsAbs(m) {
			t.Errorf("%s: want a path relative to the module dir", m)
		}
	}
	if _, err := idx.ModuleClosure("no_such_module"); err == nil {
		t.Error("unknown module: no error")
	}
}
