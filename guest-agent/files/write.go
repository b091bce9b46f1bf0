package files

import (
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// DefaultMode is the mode of a written file unless the request gives one.
	DefaultMode = 0o644
	// DirMode is the mode of parent directories a write creates.
	DirMode = 0o755
)

// WriteSpec says what to write where.
type WriteSpec struct {
	Path string
	// Mode is applied exactly with fchmod (umask does not apply), including
	// setuid/setgid/sticky. Nil = DefaultMode.
	Mode *uint32
	// UID and GID own the file and any parents the write creates; -1 = the
	// agent's own.
	UID, GID int
	// NoParents fails with FailedPrecondition instead of creating a missing
	// parent directory.
	NoParents bool
}

// Writer is an atomic write in progress: data goes to a temp file in the
// target's directory (unnamed, O_TMPFILE, where the filesystem has it) and
// replaces the target on Commit. Until then the old
// file is untouched; Abort (or a failed Commit) removes the temp file.
type Writer struct {
	spec   WriteSpec
	path   string // the target, symlinks resolved
	mode   uint32
	tmp    *os.File
	named  string // the temp file's name; "" while it is unnamed (O_TMPFILE)
	n      uint64
	closed bool
}

// Create validates spec, makes missing parents (unless NoParents) and opens
// the temp file.
func Create(spec WriteSpec) (*Writer, error) {
	p, err := CheckPath(spec.Path)
	if err != nil {
		return nil, err
	}
	mode := uint32(DefaultMode)
	if spec.Mode != nil {
		mode = *spec.Mode
	}
	if mode&^0o7777 != 0 {
		return nil, status.Errorf(codes.InvalidArgument, "write %s: mode %#o has bits outside 07777", p, mode)
	}
	if p == "/" {
		return nil, status.Error(codes.FailedPrecondition, "write /: is a directory")
	}
	p = resolveTarget(p)
	var st unix.Stat_t
	switch err := unix.Lstat(p, &st); {
	case err == nil:
		if t := typeOf(st.Mode); t != TypeRegular {
			return nil, status.Errorf(codes.FailedPrecondition, "write %s: is a %s; only regular files are replaced", p, t)
		}
	case err != unix.ENOENT:
		return nil, parentErr(p, err)
	}
	dir := filepath.Dir(p)
	if err := ensureDir(dir, spec); err != nil {
		return nil, err
	}
	w := &Writer{spec: spec, path: p, mode: mode}
	// An unnamed temp file (O_TMPFILE) vanishes by itself if the agent or
	// the VM dies mid-transfer; it gets a name only at commit. Filesystems
	// without O_TMPFILE get a named temp file from the start.
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if noTmpfile {
		err = unix.EOPNOTSUPP
	}
	switch {
	case err == nil:
		w.tmp = os.NewFile(uintptr(fd), filepath.Join(dir, "(unnamed temp file)"))
		return w, nil
	case err != unix.EOPNOTSUPP && err != unix.EISDIR && err != unix.EINVAL:
		return nil, statusErr("write", p, err)
	}
	if w.tmp, err = os.CreateTemp(dir, tempPrefix(filepath.Base(p))); err != nil {
		return nil, statusErr("write", p, err)
	}
	w.named = w.tmp.Name()
	return w, nil
}

// resolveTarget follows a symlink at p, so a write through a link replaces
// the file it points to (as "cat > link" would), not the link. A dangling
// link is replaced itself.
func resolveTarget(p string) string {
	if fi, err := os.Lstat(p); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r
		}
	}
	return p
}

// parentErr explains a failed lookup of p.
func parentErr(p string, err error) error {
	if err == unix.ENOTDIR {
		for d := filepath.Dir(p); d != "/"; d = filepath.Dir(d) {
			var st unix.Stat_t
			if unix.Stat(d, &st) == nil && typeOf(st.Mode) != TypeDirectory {
				return status.Errorf(codes.FailedPrecondition, "write %s: parent %s is a %s, not a directory", p, d, typeOf(st.Mode))
			}
		}
	}
	return statusErr("write", p, err)
}

// ensureDir makes dir exist, creating it and its missing parents with
// DirMode (set explicitly: umask does not apply) unless spec.NoParents.
func ensureDir(dir string, spec WriteSpec) error {
	var st unix.Stat_t
	err := unix.Stat(dir, &st)
	switch {
	case err == nil && typeOf(st.Mode) == TypeDirectory:
		return nil
	case err == nil:
		return status.Errorf(codes.FailedPrecondition, "write %s: parent %s is a %s, not a directory", spec.Path, dir, typeOf(st.Mode))
	case err == unix.ENOTDIR:
		return parentErr(dir, err)
	case err != unix.ENOENT:
		return statusErr("write", spec.Path, err)
	case spec.NoParents:
		return status.Errorf(codes.FailedPrecondition, "write %s: parent directory %s does not exist (no_parents)", spec.Path, dir)
	}
	if err := ensureDir(filepath.Dir(dir), spec); err != nil {
		return err
	}
	if err := unix.Mkdir(dir, DirMode); err != nil {
		if err == unix.EEXIST { // a concurrent writer made it
			return ensureDir(dir, WriteSpec{Path: spec.Path, NoParents: true})
		}
		return statusErr("mkdir", dir, err)
	}
	if spec.UID >= 0 || spec.GID >= 0 {
		if err := unix.Lchown(dir, spec.UID, spec.GID); err != nil {
			return statusErr("chown", dir, err)
		}
	}
	if err := unix.Chmod(dir, DirMode); err != nil {
		return statusErr("chmod", dir, err)
	}
	return nil
}

// tempPrefix names temp files after their target, short enough that the
// name stays under NAME_MAX.
func tempPrefix(base string) string {
	if len(base) > 100 {
		base = base[:100]
	}
	return "." + base + ".sailbox-tmp-"
}

// noTmpfile makes Create behave as on a filesystem without O_TMPFILE (tests).
var noTmpfile bool

// Path is the file the write replaces (symlinks resolved).
func (w *Writer) Path() string { return w.path }

// TempPath is the temp file's path, or "" while it has none (O_TMPFILE).
func (w *Writer) TempPath() string { return w.named }

// Written is the number of bytes written so far.
func (w *Writer) Written() uint64 { return w.n }

// Write appends to the temp file. A full filesystem is ResourceExhausted.
func (w *Writer) Write(b []byte) (int, error) {
	if w.closed {
		return 0, status.Errorf(codes.FailedPrecondition, "write %s: already finished", w.path)
	}
	n, err := w.tmp.Write(b)
	w.n += uint64(n)
	if err != nil {
		return n, w.writeErr("write", err)
	}
	return n, nil
}

func (w *Writer) writeErr(op string, err error) error {
	switch errnoOf(err) {
	case unix.ENOSPC, unix.EDQUOT:
		return status.Errorf(codes.ResourceExhausted, "write %s: no space left on device after %d bytes; the old file is unchanged", w.path, w.n)
	}
	return statusErr(op, w.path, err)
}

// Commit sets owner and mode, fsyncs the temp file, renames it over the
// target and fsyncs the directory. On error the temp file is removed and the
// old file is unchanged.
func (w *Writer) Commit() (Info, error) {
	if w.closed {
		return Info{}, status.Errorf(codes.FailedPrecondition, "write %s: already finished", w.path)
	}
	fd := int(w.tmp.Fd())
	var err error
	// chown before chmod: chown clears setuid/setgid.
	if w.spec.UID >= 0 || w.spec.GID >= 0 {
		if e := unix.Fchown(fd, w.spec.UID, w.spec.GID); e != nil {
			err = statusErr("chown", w.path, e)
		}
	}
	if err == nil {
		if e := unix.Fchmod(fd, w.mode); e != nil {
			err = statusErr("chmod", w.path, e)
		}
	}
	if err == nil {
		if e := unix.Fsync(fd); e != nil {
			err = w.writeErr("fsync", e)
		}
	}
	var st unix.Stat_t
	if err == nil {
		if e := unix.Fstat(fd, &st); e != nil {
			err = statusErr("stat", w.path, e)
		}
	}
	if err == nil && w.named == "" {
		err = w.link()
	}
	if err == nil {
		if e := w.tmp.Close(); e != nil {
			err = w.writeErr("close", e)
		}
	}
	if err == nil {
		if e := os.Rename(w.named, w.path); e != nil {
			err = statusErr("rename", w.path, e)
		}
	}
	if err != nil {
		w.Abort()
		return Info{}, err
	}
	w.closed = true
	if err := syncDir(filepath.Dir(w.path)); err != nil {
		return Info{}, statusErr("fsync directory of", w.path, err)
	}
	return infoFromStat(w.path, &st), nil
}

// Abort removes the temp file; the target is untouched. Safe to call again
// and after Commit (then it does nothing).
func (w *Writer) Abort() {
	if w.closed {
		return
	}
	w.closed = true
	w.tmp.Close() // an unnamed temp file is gone with its last descriptor
	if w.named != "" {
		if err := os.Remove(w.named); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return
		}
	}
}

// link gives the unnamed temp file a temp name in the target's directory,
// for the rename. Through /proc/self/fd (no privilege needed); without
// /proc, AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH, which root has).
func (w *Writer) link() error {
	dir := filepath.Dir(w.path)
	fd := int(w.tmp.Fd())
	for range 10 {
		name := filepath.Join(dir, tempPrefix(filepath.Base(w.path))+strconv.FormatUint(rand.Uint64(), 36))
		err := unix.Linkat(unix.AT_FDCWD, "/proc/self/fd/"+strconv.Itoa(fd), unix.AT_FDCWD, name, unix.AT_SYMLINK_FOLLOW)
		if err == unix.ENOENT {
			err = unix.Linkat(fd, "", unix.AT_FDCWD, name, unix.AT_EMPTY_PATH)
		}
		switch err {
		case nil:
			w.named = name
			return nil
		case unix.EEXIST:
			continue
		}
		return w.writeErr("link temp file of", err)
	}
	return status.Errorf(codes.Internal, "write %s: no free temp name", w.path)
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}
