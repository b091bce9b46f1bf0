package vm

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// Module sets for the guest. Names are module names (dashes or underscores);
// ModuleClosure adds their dependencies.
var (
	// VsockModules: the AF_VSOCK core first (imageinit starts the agent as
	// soon as it is in), then virtio over PCI and MMIO and the virtio-vsock
	// transport.
	VsockModules = []string{"vsock", "virtio_pci", "virtio_mmio", "vmw_vsock_virtio_transport"}
	// AgentModules: what the guest agent uses besides vsock: TCP sock_diag
	// (listener probes; SOCK_DESTROY of stale connections on resume).
	AgentModules = []string{"tcp_diag"}
	// DiskModules: virtio-blk and ext4. ext4 and jbd2 name crc32c only as a
	// soft dependency, which finit_module does not follow, so it is listed.
	DiskModules = []string{"virtio_blk", "crc32c_generic", "ext4"}
	// NetModules: virtio-net.
	NetModules = []string{"virtio_net"}
)

// ModuleIndex maps module names to their .ko files under a kernel's
// lib/modules/<release> directory.
type ModuleIndex struct {
	Dir   string            // lib/modules/<release>
	Files map[string]string // name (underscores) -> path relative to Dir
}

func modName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(s), ".ko"), "-", "_")
}

// IndexModules walks modDir for .ko files.
func IndexModules(modDir string) (*ModuleIndex, error) {
	idx := &ModuleIndex{Dir: modDir, Files: map[string]string{}}
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(modDir, p)
			idx.Files[modName(p)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index modules in %s: %w", modDir, err)
	}
	return idx, nil
}

// depends reads the "depends=" entry of a module's .modinfo section: what
// depmod would have put in modules.dep, without needing depmod.
func (x *ModuleIndex) depends(name string) ([]string, error) {
	rel, ok := x.Files[name]
	if !ok {
		return nil, fmt.Errorf("kernel module %s: not found in %s", name, x.Dir)
	}
	f, err := elf.Open(filepath.Join(x.Dir, rel))
	if err != nil {
		return nil, fmt.Errorf("kernel module %s: %w", rel, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("kernel module %s: no .modinfo section", rel)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("kernel module %s: .modinfo: %w", rel, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, modName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// ModuleClosure returns the modules and all their dependencies as paths
// relative to x.Dir, each after everything it depends on.
func (x *ModuleIndex) ModuleClosure(names ...string) ([]string, error) {
	var out []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string) error
	visit = func(n string) error {
		n = modName(n)
		switch state[n] {
		case 1:
			return fmt.Errorf("kernel module %s: dependency cycle", n)
		case 2:
			return nil
		}
		state[n] = 1
		deps, err := x.depends(n)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[n] = 2
		out = append(out, x.Files[n])
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}
