package vm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// Image is what goes into the guest's initramfs.
type Image struct {
	Init    string // host path of the static arm64 imageinit, installed as /init
	Agent   string // host path of the static arm64 guest-agent ("" for none), as /usr/bin/guest-agent
	Busybox string // host path of the static arm64 busybox, as /bin/busybox plus applet links
	Kernel  Kernel
	// Modules are module names; their dependency closure is included and
	// listed in load order in /etc/sailbox/modules.
	Modules  []string
	Hostname string // /etc/hostname (default "sailbox")
	// Files are extra files: guest path -> host path.
	Files map[string]string
}

// GuestAgentPath is where the agent lives in the guest (imageinit's default).
const GuestAgentPath = "/usr/bin/guest-agent"

// busyboxApplets get a /bin symlink each: what `/bin/sh -c` commands, tests
// and a debugging shell need. busybox-static has them all.
var busyboxApplets = []string{
	"sh", "ash", "cat", "chmod", "chown", "cp", "cut", "date", "dd", "df", "dmesg", "du", "echo", "env",
	"false", "find", "free", "grep", "gzip", "head", "hostname", "httpd", "id", "ip", "kill", "killall",
	"ln", "ls", "lsmod", "md5sum", "mkdir", "mknod", "mktemp", "mount", "mv", "nc", "netstat", "nproc",
	"pidof", "pgrep", "pkill", "poweroff", "printf", "ps", "pwd", "readlink", "rm", "rmdir", "sed",
	"seq", "sha1sum", "sha256sum", "sleep", "sort", "stat", "stty", "tty", "sync", "tail", "tar", "tee", "test", "top",
	"touch", "tr", "true", "umount", "uname", "uptime", "vi", "watch", "wc", "wget", "which", "xargs", "yes",
}

// cpioWriter writes newc entries and remembers the directories it wrote so
// every file's parents come first (the kernel's unpacker needs that).
type cpioWriter struct {
	w    *cpio.Writer
	dirs map[string]bool
}

func (c *cpioWriter) dir(p string, perm cpio.FileMode) error {
	p = strings.TrimPrefix(path.Clean(p), "/")
	if p == "" || p == "." || c.dirs[p] {
		return nil
	}
	if err := c.dir(path.Dir(p), 0o755); err != nil {
		return err
	}
	c.dirs[p] = true
	return c.w.WriteHeader(&cpio.Header{Name: p, Mode: cpio.TypeDir | perm, Links: 2})
}

func (c *cpioWriter) file(p string, perm cpio.FileMode, data []byte) error {
	p = strings.TrimPrefix(path.Clean(p), "/")
	if err := c.dir(path.Dir(p), 0o755); err != nil {
		return err
	}
	if err := c.w.WriteHeader(&cpio.Header{Name: p, Mode: cpio.TypeReg | perm, Size: int64(len(data))}); err != nil {
		return err
	}
	_, err := c.w.Write(data)
	return err
}

func (c *cpioWriter) hostFile(p string, perm cpio.FileMode, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("initramfs: %s is not a regular file", src)
	}
	p = strings.TrimPrefix(path.Clean(p), "/")
	if err := c.dir(path.Dir(p), 0o755); err != nil {
		return err
	}
	if err := c.w.WriteHeader(&cpio.Header{Name: p, Mode: cpio.TypeReg | perm, Size: fi.Size()}); err != nil {
		return err
	}
	if n, err := io.Copy(c.w, f); err != nil || n != fi.Size() {
		return fmt.Errorf("initramfs: copy %s: %d of %d bytes: %v", src, n, fi.Size(), err)
	}
	return nil
}

// symlink stores the target as the entry's data, as newc does.
func (c *cpioWriter) symlink(p, target string) error {
	p = strings.TrimPrefix(path.Clean(p), "/")
	if err := c.dir(path.Dir(p), 0o755); err != nil {
		return err
	}
	if err := c.w.WriteHeader(&cpio.Header{Name: p, Mode: cpio.TypeSymlink | 0o777, Size: int64(len(target)), Linkname: target}); err != nil {
		return err
	}
	_, err := c.w.Write([]byte(target))
	return err
}

// WriteInitramfs writes img as an uncompressed cpio newc archive. It is
// left uncompressed on purpose: inflating under TCG costs more boot time
// than QEMU spends loading a few more megabytes.
func WriteInitramfs(w io.Writer, img Image) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	c := &cpioWriter{w: cpio.NewWriter(bw), dirs: map[string]bool{}}
	if err := c.writeAll(img); err != nil {
		return err
	}
	if err := c.w.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

func (c *cpioWriter) writeAll(img Image) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc/sailbox", "dev", "proc", "sys", "run", "var", "mnt", "data"} {
		if err := c.dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := c.dir("root", 0o700); err != nil {
		return err
	}
	if err := c.dir("tmp", 0o1777); err != nil {
		return err
	}
	if img.Init == "" {
		return fmt.Errorf("initramfs: no init binary")
	}
	if err := c.hostFile("init", 0o755, img.Init); err != nil {
		return err
	}
	if img.Agent != "" {
		if err := c.hostFile(GuestAgentPath, 0o755, img.Agent); err != nil {
			return err
		}
	}
	if img.Busybox != "" {
		if err := c.hostFile("bin/busybox", 0o755, img.Busybox); err != nil {
			return err
		}
		for _, a := range busyboxApplets {
			if err := c.symlink("bin/"+a, "busybox"); err != nil {
				return err
			}
		}
	}
	host := img.Hostname
	if host == "" {
		host = "sailbox"
	}
	etc := map[string]string{
		"etc/hostname": host + "\n",
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"etc/group":    "root:x:0:\nnogroup:x:65534:\n",
		"etc/hosts":    "127.0.0.1\tlocalhost " + host + "\n::1\tlocalhost\n",
	}
	for _, p := range slices.Sorted(func(yield func(string) bool) {
		for k := range etc {
			if !yield(k) {
				return
			}
		}
	}) {
		if err := c.file(p, 0o644, []byte(etc[p])); err != nil {
			return err
		}
	}
	var list strings.Builder
	if len(img.Modules) > 0 {
		idx, err := IndexModules(img.Kernel.ModDir)
		if err != nil {
			return err
		}
		mods, err := idx.ModuleClosure(img.Modules...)
		if err != nil {
			return err
		}
		for _, rel := range mods {
			guest := path.Join("lib/modules", img.Kernel.Release, filepath.ToSlash(rel))
			if err := c.hostFile(guest, 0o644, filepath.Join(img.Kernel.ModDir, rel)); err != nil {
				return err
			}
			list.WriteString("/" + guest + "\n")
		}
	}
	if err := c.file("etc/sailbox/modules", 0o644, []byte(list.String())); err != nil {
		return err
	}
	for _, g := range slices.Sorted(func(yield func(string) bool) {
		for k := range img.Files {
			if !yield(k) {
				return
			}
		}
	}) {
		if err := c.hostFile(g, 0o755, img.Files[g]); err != nil {
			return err
		}
	}
	return nil
}

// BuildInitramfs writes img to the file dst (via a temp file and rename).
func BuildInitramfs(dst string, img Image) error {
	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := WriteInitramfs(f, img); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("initramfs %s: %w", dst, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
