package rootfs

import (
	"context"
	"slices"

	"github.com/sailbox/sailbox/host-supervisor/vm"
)

// vmModules are the modules the VM needs, by name: the VM driver's sets
// (virtio transports, vsock, the agent's tcp_diag, virtio-blk + ext4,
// virtio-net) plus the virtio console.
func vmModules() []string {
	var names []string
	names = append(names, vm.VsockModules...)
	names = append(names, vm.AgentModules...)
	names = append(names, vm.DiskModules...)
	names = append(names, vm.NetModules...)
	return append(names, "virtio_console")
}

// defaultKernel takes the kernel from the VM driver's fetcher, so the image
// carries modules of exactly the kernel the VM boots (same package, same
// cache). There is no armhf VM kernel yet: nil.
func defaultKernel(ctx context.Context, cacheRoot, debArch string) (*Kernel, error) {
	if debArch != "arm64" {
		return nil, nil
	}
	f := vm.Fetcher{Cache: cacheRoot}
	k, err := f.Kernel(ctx)
	if err != nil {
		return nil, err
	}
	return &Kernel{
		Package: k.Package, Version: k.Version, Release: k.Release, Image: k.Image, ModDir: k.ModDir,
		Modules: func() ([]string, error) {
			idx, err := vm.IndexModules(k.ModDir)
			if err != nil {
				return nil, err
			}
			names := slices.DeleteFunc(vmModules(), func(n string) bool {
				_, ok := idx.Files[n]
				return !ok // built into this flavour
			})
			return idx.ModuleClosure(names...)
		},
	}, nil
}
