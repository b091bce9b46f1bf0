package netfilter

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// DefaultRoot is the bpffs directory holding one directory per filtered
// device: <root>/<device>/{policy,ports,drops} and link (TCX) or prog (tc).
const DefaultRoot = "/sys/fs/bpf/sailbox"

// Mode is how the program is attached to a device.
type Mode string

const (
	ModeAuto Mode = ""    // TCX where the kernel has it (≥ 6.6), else tc
	ModeTCX  Mode = "tcx" // a TCX egress link
	ModeTC   Mode = "tc"  // a direct-action filter on a clsact qdisc
)

// Filters attaches, updates, lists and detaches the ingress filters of
// devices. State lives only in the kernel, pinned under Root, so separate
// processes (CLI invocations, a restarted daemon) see the same filters.
// Device names are resolved in the caller's network namespace.
type Filters struct {
	Root string // bpffs directory; DefaultRoot if empty
	Mode Mode   // attach mode for Attach and Apply; ModeAuto if empty
}

// State is what List reports for a device.
type State struct {
	Device string
	Mode   Mode
	Policy Policy // policed ports only
	Drops  uint64 // packets dropped since attach
}

// attachTCX is link.AttachTCX; tests replace it to force the tc fallback.
var attachTCX = link.AttachTCX

// Attach, Apply, Update, List, Detach and Devices call the same methods of
// Filters{} (DefaultRoot, ModeAuto).
func Attach(device string, p Policy) error { return Filters{}.Attach(device, p) }
func Apply(device string, p Policy) error  { return Filters{}.Apply(device, p) }
func Update(device string, p Policy) error { return Filters{}.Update(device, p) }
func List(device string) (State, error)    { return Filters{}.List(device) }
func Detach(device string) error           { return Filters{}.Detach(device) }
func Devices() ([]string, error)           { return Filters{}.Devices() }

func (f Filters) root() string {
	if f.Root == "" {
		return DefaultRoot
	}
	return f.Root
}

func (f Filters) dir(device string) (string, error) {
	if device == "" || len(device) > unix.IFNAMSIZ-1 || strings.ContainsAny(device, "/ \x00") || device == "." || device == ".." {
		return "", withCode(codes.InvalidArgument, fmt.Errorf("netfilter: invalid device name %q", device))
	}
	return filepath.Join(f.root(), device), nil
}

// Attach programs p into a new filter and attaches it to device. It fails
// with ErrAttached when the device already has a live filter; pins left by
// a filter whose device went away are cleaned up first.
func (f Filters) Attach(device string, p Policy) error {
	return f.locked(device, func(dir string) error {
		if live, err := f.live(device, dir); err != nil {
			return err
		} else if live {
			return fmt.Errorf("netfilter: %s: %w", device, ErrAttached)
		}
		return f.attach(device, dir, p)
	})
}

// Apply makes device enforce p: Update when a filter is live, else Attach.
func (f Filters) Apply(device string, p Policy) error {
	return f.locked(device, func(dir string) error {
		live, err := f.live(device, dir)
		if err != nil {
			return err
		}
		if live {
			return update(device, dir, p)
		}
		return f.attach(device, dir, p)
	})
}

// Update replaces the policy of device's live filter. Sources allowed by
// both the old and the new policy are never refused during the update.
func (f Filters) Update(device string, p Policy) error {
	return f.locked(device, func(dir string) error {
		if live, err := f.live(device, dir); err != nil {
			return err
		} else if !live {
			return fmt.Errorf("netfilter: %s: %w", device, ErrNotAttached)
		}
		return update(device, dir, p)
	})
}

// List reports device's filter.
func (f Filters) List(device string) (State, error) {
	var st State
	err := f.locked(device, func(dir string) error {
		if live, err := f.live(device, dir); err != nil {
			return err
		} else if !live {
			return fmt.Errorf("netfilter: %s: %w", device, ErrNotAttached)
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "policy"), nil)
		if err != nil {
			return fmt.Errorf("netfilter: %s: %w", device, err)
		}
		defer m.Close()
		entries, err := dump(m)
		if err != nil {
			return fmt.Errorf("netfilter: %s: %w", device, err)
		}
		st = State{Device: device, Mode: pinnedMode(dir), Policy: decode(entries)}
		st.Drops, err = readDrops(filepath.Join(dir, "drops"))
		if err != nil {
			return fmt.Errorf("netfilter: %s: %w", device, err)
		}
		return nil
	})
	return st, err
}

// Detach removes device's filter and its pins; the device is open again.
// It fails with ErrNotAttached when there is nothing to remove.
func (f Filters) Detach(device string) error {
	return f.locked(device, func(dir string) error {
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("netfilter: %s: %w", device, ErrNotAttached)
		}
		return cleanup(device, dir)
	})
}

// Devices lists the devices with pinned filters (live or stale).
func (f Filters) Devices() ([]string, error) {
	ents, err := os.ReadDir(f.root())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netfilter: %w", err)
	}
	var devs []string
	for _, e := range ents {
		if e.IsDir() {
			devs = append(devs, e.Name())
		}
	}
	return devs, nil
}

// locked runs fn with an exclusive flock on the root directory, so that
// concurrent CLI invocations do not interleave updates.
func (f Filters) locked(device string, fn func(dir string) error) error {
	dir, err := f.dir(device)
	if err != nil {
		return err
	}
	if err := ensureRoot(f.root()); err != nil {
		return err
	}
	fd, err := unix.Open(f.root(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netfilter: open %s: %w", f.root(), err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("netfilter: lock %s: %w", f.root(), err)
	}
	defer unix.Flock(fd, unix.LOCK_UN)
	return fn(dir)
}

// ensureRoot creates root on a bpffs, mounting bpffs at its parent when
// the parent is the usual /sys/fs/bpf and nothing is mounted there yet.
func ensureRoot(root string) error {
	parent := filepath.Dir(root)
	var st unix.Statfs_t
	if err := unix.Statfs(parent, &st); err != nil {
		return fmt.Errorf("netfilter: statfs %s: %w", parent, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		if parent != "/sys/fs/bpf" {
			return fmt.Errorf("netfilter: %s is not a bpffs", parent)
		}
		if err := unix.Mount("bpf", parent, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("netfilter: mount bpffs at %s: %w", parent, err)
		}
		slog.Info("netfilter: mounted bpffs", "path", parent)
	}
	if err := os.Mkdir(root, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("netfilter: %w", err)
	}
	return nil
}

func pinnedMode(dir string) Mode {
	if _, err := os.Stat(filepath.Join(dir, "link")); err == nil {
		return ModeTCX
	}
	return ModeTC
}

// live reports whether dir holds a filter attached to device as it exists
// now (same ifindex). Pins of a filter whose device was deleted (and maybe
// re-created) are stale: live removes them and reports false.
func (f Filters) live(device, dir string) (bool, error) {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	ifindex := 0
	if iface, err := net.InterfaceByName(device); err == nil {
		ifindex = iface.Index
	}
	ok, err := false, error(nil)
	switch pinnedMode(dir) {
	case ModeTCX:
		ok, err = tcxLive(filepath.Join(dir, "link"), ifindex)
	default:
		ok, err = tcLive(filepath.Join(dir, "prog"), ifindex)
	}
	if err != nil {
		return false, fmt.Errorf("netfilter: %s: %w", device, err)
	}
	if !ok {
		slog.Info("netfilter: removing stale pins", "device", device, "dir", dir)
		if err := cleanup(device, dir); err != nil {
			return false, err
		}
	}
	return ok, nil
}

func tcxLive(pin string, ifindex int) (bool, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return false, err
	}
	tcx := info.TCX()
	return ifindex != 0 && tcx != nil && int(tcx.Ifindex) == ifindex, nil
}

// attach loads the program and a fresh policy map, fills the map, attaches
// and pins. Filling before attaching means the device never runs with a
// partial policy.
func (f Filters) attach(device, dir string, p Policy) (err error) {
	if m := f.Mode; m != ModeAuto && m != ModeTCX && m != ModeTC {
		return withCode(codes.InvalidArgument, fmt.Errorf("netfilter: unknown attach mode %q", m))
	}
	want, err := p.entries()
	if err != nil {
		return withCode(codes.InvalidArgument, fmt.Errorf("netfilter: %s: %w", device, err))
	}
	iface, err := net.InterfaceByName(device)
	if err != nil {
		return withCode(codes.NotFound, fmt.Errorf("netfilter: device %s: %w", device, err))
	}
	objs, err := loadObjects()
	if err != nil {
		return fmt.Errorf("netfilter: %s: %w", device, err)
	}
	defer objs.Close()
	if err := updateMaps(objs.filterMaps, p); err != nil {
		return fmt.Errorf("netfilter: %s: fill policy: %w", device, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("netfilter: %w", err)
	}
	defer func() {
		if err != nil {
			if cerr := cleanup(device, dir); cerr != nil {
				slog.Warn("netfilter: cleanup after failed attach", "device", device, "err", cerr)
			}
		}
	}()
	if err := objs.Policy.Pin(filepath.Join(dir, "policy")); err != nil {
		return fmt.Errorf("netfilter: %s: %w", device, err)
	}
	if err := objs.Drops.Pin(filepath.Join(dir, "drops")); err != nil {
		return fmt.Errorf("netfilter: %s: %w", device, err)
	}
	if err := objs.Ports.Pin(filepath.Join(dir, "ports")); err != nil {
		return fmt.Errorf("netfilter: %s: %w", device, err)
	}
	if mode := f.Mode; mode == ModeAuto || mode == ModeTCX {
		// First in the chain: a program before it returning TCX_PASS
		// would skip the filter. It passes with TCX_NEXT, so the others
		// still run.
		l, err := attachTCX(link.TCXOptions{
			Interface: iface.Index,
			Program:   objs.Prog,
			Attach:    ebpf.AttachTCXEgress,
			Anchor:    link.Head(),
		})
		switch {
		case err == nil:
			defer l.Close()
			if err := l.Pin(filepath.Join(dir, "link")); err != nil {
				return fmt.Errorf("netfilter: %s: pin link: %w", device, err)
			}
			slog.Info("netfilter: attached", "device", device, "mode", ModeTCX, "entries", len(want))
			return nil
		case f.Mode == ModeAuto && errors.Is(err, ebpf.ErrNotSupported):
			slog.Info("netfilter: TCX not supported, falling back to tc clsact", "device", device)
		default:
			return fmt.Errorf("netfilter: %s: attach TCX: %w", device, err)
		}
	}
	if err := objs.Prog.Pin(filepath.Join(dir, "prog")); err != nil {
		return fmt.Errorf("netfilter: %s: %w", device, err)
	}
	if err := tcAttach(iface.Index, objs.Prog); err != nil {
		return fmt.Errorf("netfilter: %s: attach tc: %w", device, err)
	}
	slog.Info("netfilter: attached", "device", device, "mode", ModeTC, "entries", len(want))
	return nil
}

// cleanup detaches whatever dir's pins attach and removes the pins.
func cleanup(device, dir string) error {
	var errs []error
	if l, err := link.LoadPinnedLink(filepath.Join(dir, "link"), nil); err == nil {
		// Detach explicitly: another process may hold the link open.
		if err := l.Detach(); err != nil && !errors.Is(err, unix.ENOLINK) && !errors.Is(err, unix.ENODEV) {
			slog.Debug("netfilter: detach link", "device", device, "err", err)
		}
		errs = append(errs, l.Unpin())
		l.Close()
	}
	if prog, err := ebpf.LoadPinnedProgram(filepath.Join(dir, "prog"), nil); err == nil {
		if iface, err := net.InterfaceByName(device); err == nil {
			errs = append(errs, tcDetach(iface.Index, prog))
		}
		errs = append(errs, prog.Unpin())
		prog.Close()
	}
	for _, name := range []string{"policy", "ports", "drops"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netfilter: %s: detach: %w", device, err)
	}
	slog.Info("netfilter: detached", "device", device)
	return nil
}

func readDrops(pin string) (uint64, error) {
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		return 0, err
	}
	defer m.Close()
	var perCPU []uint64
	if err := m.Lookup(uint32(0), &perCPU); err != nil {
		return 0, err
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}
