package rootfs

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// resolveInRoot maps an absolute guest path to a host path under root,
// following the tree's symlinks as the guest would (an absolute link target
// is relative to root, ".." stops at root), so nothing is written outside
// the tree. The last component is followed only with followLast (callers
// that replace a file do not follow it).
func resolveInRoot(root, p string, followLast bool) (string, error) {
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	cur := "/"
	for hops := 0; len(parts) > 0; {
		part := parts[0]
		parts = parts[1:]
		if part == "" || part == "." {
			continue
		}
		next := path.Join(cur, part)
		if len(parts) == 0 && !followLast {
			return filepath.Join(root, next), nil
		}
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("resolve %s in %s: too many symlinks", p, root)
		}
		t, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if !path.IsAbs(t) {
			t = path.Join(cur, t)
		}
		parts = append(strings.Split(strings.Trim(path.Clean(t), "/"), "/"), parts...)
		cur = "/"
	}
	return filepath.Join(root, cur), nil
}

// writeInRoot writes a file at guest path p in the tree (parents created).
func writeInRoot(root, p string, data []byte, mode fs.FileMode) error {
	dst, err := resolveInRoot(root, p, false)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	os.Remove(dst)
	if err := os.WriteFile(dst, data, mode); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}
