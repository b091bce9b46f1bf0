package files

import (
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Type is a file's kind.
type Type int

const (
	TypeUnknown Type = iota
	TypeRegular
	TypeDirectory
	TypeSymlink
	TypeFIFO
	TypeSocket
	TypeCharDevice
	TypeBlockDevice
)

var typeNames = [...]string{"unknown file type", "regular file", "directory", "symlink", "FIFO", "socket", "character device", "block device"}

func (t Type) String() string {
	if t < 0 || int(t) >= len(typeNames) {
		return typeNames[0]
	}
	return typeNames[t]
}

// Info describes a file.
type Info struct {
	Path          string
	Type          Type
	Size          uint64
	Mode          uint32 // st_mode & 07777: permissions, setuid, setgid, sticky
	UID, GID      uint32
	MTime         time.Time
	SymlinkTarget string
	Dev, Ino      uint64
}

// Same reports whether two infos describe the same, unmodified file.
func (i Info) Same(o Info) bool {
	return i.Dev == o.Dev && i.Ino == o.Ino && i.Size == o.Size && i.MTime.Equal(o.MTime)
}

func typeOf(mode uint32) Type {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return TypeRegular
	case unix.S_IFDIR:
		return TypeDirectory
	case unix.S_IFLNK:
		return TypeSymlink
	case unix.S_IFIFO:
		return TypeFIFO
	case unix.S_IFSOCK:
		return TypeSocket
	case unix.S_IFCHR:
		return TypeCharDevice
	case unix.S_IFBLK:
		return TypeBlockDevice
	}
	return TypeUnknown
}

func infoFromStat(path string, st *unix.Stat_t) Info {
	return Info{
		Path: path, Type: typeOf(st.Mode), Size: uint64(st.Size), Mode: st.Mode & 0o7777,
		UID: st.Uid, GID: st.Gid, MTime: time.Unix(st.Mtim.Unix()), Dev: st.Dev, Ino: st.Ino,
	}
}

// Stat describes path without following a final symlink (whose target is
// reported in SymlinkTarget).
func Stat(path string) (Info, error) {
	p, err := CheckPath(path)
	if err != nil {
		return Info{}, err
	}
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return Info{}, statusErr("stat", p, err)
	}
	info := infoFromStat(p, &st)
	if info.Type == TypeSymlink {
		if t, err := os.Readlink(p); err == nil {
			info.SymlinkTarget = t
		}
	}
	return info, nil
}

// FileMode converts Info.Mode and Type to an os.FileMode (for display).
func (i Info) FileMode() os.FileMode {
	m := os.FileMode(i.Mode & 0o777)
	if i.Mode&syscall.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if i.Mode&syscall.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if i.Mode&syscall.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	switch i.Type {
	case TypeDirectory:
		m |= os.ModeDir
	case TypeSymlink:
		m |= os.ModeSymlink
	case TypeFIFO:
		m |= os.ModeNamedPipe
	case TypeSocket:
		m |= os.ModeSocket
	case TypeCharDevice:
		m |= os.ModeDevice | os.ModeCharDevice
	case TypeBlockDevice:
		m |= os.ModeDevice
	}
	return m
}
