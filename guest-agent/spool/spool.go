// Package spool keeps one output stream of an exec in an append-only file
// addressed by byte offset, so readers can start anywhere, follow new data,
// and resume after a disconnect without gaps or duplicates.
//
// A spool has a cap: bytes past it are counted but not kept, and the spool
// reports itself truncated; it never blocks or fails the writer.
package spool

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Spool is an append-only, offset-addressed byte log on a file. The file is
// created at the first kept byte: most execs print little or nothing, and an
// exec round trip should not pay for files it never uses.
type Spool struct {
	path string
	f    *os.File // nil until the first kept write
	cap  uint64

	mu      sync.Mutex
	kept    uint64 // bytes stored in f
	total   uint64 // bytes written, including those past the cap
	closed  bool   // no more writes
	changed chan struct{}
	werr    error
}

// Create makes a new spool at path that keeps at most cap bytes. The file
// itself appears with the first byte written; path must not exist.
func Create(path string, cap uint64) (*Spool, error) {
	return &Spool{path: path, cap: cap, changed: make(chan struct{})}, nil
}

// open creates the file; s.mu is held.
func (s *Spool) open() error {
	// unix.Open + NewFile: os.OpenFile would try (and fail) to register a
	// regular file with the poller, five syscalls for nothing.
	fd, err := unix.Open(s.path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create spool %s: %w", s.path, err)
	}
	s.f = os.NewFile(uintptr(fd), s.path)
	return nil
}

// Write appends p, keeping what fits under the cap. It reports len(p) so that
// a copier never stops draining its source because of the cap. An error
// writing the file (a full tmpfs) is remembered and the data counted as lost
// to truncation.
func (s *Spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, os.ErrClosed
	}
	keep := uint64(len(p))
	if room := s.cap - min(s.kept, s.cap); keep > room {
		keep = room
	}
	if keep > 0 && s.werr == nil && s.f == nil {
		if err := s.open(); err != nil {
			s.werr = err
			s.cap = s.kept
			keep = 0
		}
	}
	if keep > 0 && s.werr == nil {
		n, err := s.f.WriteAt(p[:keep], int64(s.kept))
		s.kept += uint64(n)
		if err != nil {
			s.werr = err
			s.cap = s.kept // stop keeping: readers see truncation, not a hole
		}
	}
	s.total += uint64(len(p))
	close(s.changed)
	s.changed = make(chan struct{})
	return len(p), nil
}

// ErrNoSplice means Splice cannot take data: the cap is reached, the file
// failed, or the source is not a pipe. Nothing was consumed: use Write.
var ErrNoSplice = errors.New("spool: cannot splice")

// Splice moves up to max bytes from the pipe fd (non-blocking) into the
// spool without a user-space copy. It returns 0, nil at the pipe's EOF and
// unix.EAGAIN when the pipe is empty.
func (s *Spool) Splice(fd int, max int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, os.ErrClosed
	}
	room := s.cap - min(s.kept, s.cap)
	if room == 0 || s.werr != nil {
		return 0, ErrNoSplice
	}
	if s.f == nil {
		if err := s.open(); err != nil {
			s.werr = err
			s.cap = s.kept
			return 0, ErrNoSplice
		}
	}
	off := int64(s.kept)
	n, err := unix.Splice(fd, nil, int(s.f.Fd()), &off, int(min(uint64(max), room)), unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	switch {
	case err == unix.EINVAL && n <= 0:
		return 0, ErrNoSplice
	case err != nil:
		return 0, err
	case n == 0:
		return 0, nil
	}
	s.kept += uint64(n)
	s.total += uint64(n)
	close(s.changed)
	s.changed = make(chan struct{})
	return int(n), nil
}

// CloseWrite marks the end of the stream and wakes followers.
func (s *Spool) CloseWrite() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

// Changed returns a channel closed at the next write or CloseWrite. Take it
// before reading so that no write can slip between the read and the wait.
func (s *Spool) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Info describes a spool at one moment.
type Info struct {
	Kept, Total uint64
	Truncated   bool
	Closed      bool
	WriteErr    error
}

// Info returns the spool's sizes and state.
func (s *Spool) Info() Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Info{Kept: s.kept, Total: s.total, Truncated: s.total > s.kept, Closed: s.closed, WriteErr: s.werr}
}

// ReadAt reads kept bytes at off; it returns io.EOF at the current end.
func (s *Spool) ReadAt(p []byte, off uint64) (int, error) {
	s.mu.Lock()
	kept, f := s.kept, s.f
	s.mu.Unlock()
	if off > kept {
		return 0, fmt.Errorf("offset %d is past the end of the output (%d bytes)", off, kept)
	}
	if off == kept {
		return 0, io.EOF
	}
	if rest := kept - off; uint64(len(p)) > rest {
		p = p[:rest]
	}
	return f.ReadAt(p, int64(off))
}

// Section returns the spool's file and how many kept bytes (at most n) can
// be read from it at off, for a caller that copies without a user-space
// buffer (sendfile). It returns io.EOF at the current end.
func (s *Spool) Section(off, n uint64) (*os.File, uint64, error) {
	s.mu.Lock()
	kept, f := s.kept, s.f
	s.mu.Unlock()
	if off > kept {
		return nil, 0, fmt.Errorf("offset %d is past the end of the output (%d bytes)", off, kept)
	}
	if off == kept {
		return nil, 0, io.EOF
	}
	return f, min(n, kept-off), nil
}

// Remove closes and deletes the spool file.
func (s *Spool) Remove() error {
	s.CloseWrite()
	s.mu.Lock()
	f := s.f
	s.mu.Unlock()
	if f == nil {
		return nil // never written: there is no file
	}
	f.Close()
	return os.Remove(s.path)
}
