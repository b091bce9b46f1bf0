package pid1

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// NewRoot is where stage 1 mounts the root disk before moving it to /.
const NewRoot = "/newroot"

// onInitramfs reports whether / is the initramfs (ramfs or tmpfs), i.e.
// whether this is stage 1 of a root-disk boot. After the switch / is the
// disk, so the image's own init, reading the same command line, boots.
func onInitramfs() bool {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil {
		return false
	}
	return st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC
}

// switchRoot loads the initramfs's modules (virtio-blk, ext4), mounts
// Config.Root at /newroot, moves it over / and execs Config.RootInit there,
// which stays PID 1 and boots the image. The initramfs's files are left in
// place (a few MiB of RAM); the mounts made here are undone first, since the
// image's init makes its own.
func (p *pid1) switchRoot() error {
	p.mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	p.mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755")
	ensureConsole()
	if _, err := LoadModules(p.cfg.Modules, p.log, nil); err != nil {
		p.log.Warn("modules", "err", err)
	}
	// The block device appears when its driver's probe finishes.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(p.cfg.Root); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root device %s did not appear within 10s", p.cfg.Root)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := os.MkdirAll(NewRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(p.cfg.Root, NewRoot, p.cfg.RootFSType, 0, ""); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", p.cfg.Root, p.cfg.RootFSType, NewRoot, err)
	}
	init := filepath.Join(NewRoot, p.cfg.RootInit)
	if fi, err := os.Stat(init); err != nil || fi.Mode()&0o111 == 0 {
		unix.Unmount(NewRoot, 0)
		return fmt.Errorf("root disk %s has no executable %s: %v", p.cfg.Root, p.cfg.RootInit, err)
	}
	for i := len(p.mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(p.mounts[i], 0); err != nil {
			unix.Unmount(p.mounts[i], unix.MNT_DETACH)
		}
	}
	p.mounts = nil
	if err := unix.Chdir(NewRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move %s to /: %w", NewRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot %s: %w", NewRoot, err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	p.log.Info("switching root", "root", p.cfg.Root, "init", p.cfg.RootInit)
	err := unix.Exec(p.cfg.RootInit, []string{p.cfg.RootInit}, os.Environ())
	// Past the chroot there is no way back to the initramfs: boot on from
	// the disk with this binary.
	return fmt.Errorf("exec %s on the root disk: %w", p.cfg.RootInit, err)
}
