package files

import (
	"os"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Reader reads one regular file.
type Reader struct {
	f    *os.File
	Info Info // as of Open (symlinks followed; Path is the requested path)
}

// Open opens path for reading if it is, after following symlinks, a regular
// file. Anything else fails at once with FailedPrecondition naming its type:
// the type is checked with stat before the open, the open is non-blocking
// (so a FIFO swapped in between cannot block it) and fstat checks the opened
// file again.
func Open(path string) (*Reader, error) {
	p, err := CheckPath(path)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return nil, statusErr("read", p, err)
	}
	if t := typeOf(st.Mode); t != TypeRegular {
		return nil, notRegular(p, t)
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, statusErr("read", p, err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, statusErr("read", p, err)
	}
	if t := typeOf(st.Mode); t != TypeRegular {
		unix.Close(fd)
		return nil, notRegular(p, t)
	}
	return &Reader{f: os.NewFile(uintptr(fd), p), Info: infoFromStat(p, &st)}, nil
}

func notRegular(p string, t Type) error {
	return status.Errorf(codes.FailedPrecondition, "%s is a %s, not a regular file", p, t)
}

// ReadAt reads at off (pread: no shared file position).
func (r *Reader) ReadAt(b []byte, off int64) (int, error) {
	n, err := r.f.ReadAt(b, off)
	if err != nil && errnoOf(err) != 0 {
		return n, statusErr("read", r.Info.Path, err)
	}
	return n, err
}

// Stat returns the file's current info.
func (r *Reader) Stat() (Info, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(r.f.Fd()), &st); err != nil {
		return Info{}, statusErr("stat", r.Info.Path, err)
	}
	return infoFromStat(r.Info.Path, &st), nil
}

// Close closes the file.
func (r *Reader) Close() error { return r.f.Close() }

// File returns the open file (for sendfile); the Reader still owns it.
func (r *Reader) File() *os.File { return r.f }
