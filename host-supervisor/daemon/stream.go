package daemon

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// InlineMax is the largest stream kept in the journal itself rather than
// in a file: most execs print little, and a stream in the journal costs no
// file, no fsync of its own and shares the journal's batched commit.
const InlineMax = 64 << 10

// streamStore holds one output stream of a live exec: in memory (journalled
// inline) while it is small, in a file once it grows past InlineMax.
// Callers hold the liveExec's lock.
type streamStore struct {
	path   string
	mem    []byte   // the whole stream while f == nil
	f      *os.File // after spilling
	offset uint64   // consumed from the agent
	kept   uint64   // stored
	cut    bool     // the cap dropped bytes
	cap    uint64
	synced uint64 // kept at the last fsync of f
	closed bool
}

var errRetired = errors.New("exec no longer live")

// openStream prepares a stream for a record: inline data from the journal,
// or the file cut back to the journalled size (bytes past it were never
// journalled and will be copied again from the agent).
func openStream(fresh bool, path string, offset, kept uint64, cut bool, capBytes uint64, inline []byte, hasInline bool) (*streamStore, error) {
	s := &streamStore{path: path, offset: offset, kept: kept, cut: cut, cap: capBytes}
	if fresh {
		return s, nil
	}
	if hasInline || kept == 0 {
		s.mem = inline[:min(uint64(len(inline)), kept)]
		if uint64(len(s.mem)) < kept { // cannot happen: the journal holds both
			s.kept, s.offset = uint64(len(s.mem)), min(s.offset, uint64(len(s.mem)))
		}
		os.Remove(path) // a spill the journal never recorded
		return s, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("output file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	switch size := uint64(fi.Size()); {
	case size > kept:
		if err := f.Truncate(int64(kept)); err != nil {
			f.Close()
			return nil, fmt.Errorf("cut %s back to the journalled %d bytes: %w", path, kept, err)
		}
	case size < kept:
		// Cannot happen when fsync is honest (files are synced before their
		// sizes are journalled); resume from what is there when possible.
		if s.offset == s.kept {
			s.offset = size
		}
		s.kept = size
	}
	s.f, s.synced = f, s.kept
	return s, nil
}

// write stores p (the next bytes from the agent), up to the cap.
func (s *streamStore) write(p []byte) error {
	n := uint64(len(p))
	k := uint64(0)
	if s.kept < s.cap {
		k = min(s.cap-s.kept, n)
	}
	if k > 0 {
		if s.f == nil && s.kept+k > InlineMax {
			if err := s.spill(); err != nil {
				return err
			}
		}
		if s.f == nil {
			s.mem = append(s.mem, p[:k]...)
		} else if _, err := s.f.WriteAt(p[:k], int64(s.kept)); err != nil {
			return fmt.Errorf("store output: %w", err)
		}
		s.kept += k
	}
	if k < n {
		s.cut = true
	}
	s.offset += n
	return nil
}

// spill moves the stream from memory to its file.
func (s *streamStore) spill() error {
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("store output: %w", err)
	}
	if _, err := f.WriteAt(s.mem, 0); err != nil {
		f.Close()
		return fmt.Errorf("store output: %w", err)
	}
	s.f, s.mem, s.synced = f, nil, 0
	return nil
}

// readAt reads stored bytes at off.
func (s *streamStore) readAt(p []byte, off uint64) (int, error) {
	if s.closed && s.f != nil {
		return 0, errRetired // the file is closed; read it from the store
	}
	if off >= s.kept {
		return 0, io.EOF
	}
	p = p[:min(uint64(len(p)), s.kept-off)]
	if s.f == nil {
		return copy(p, s.mem[off:]), nil
	}
	return s.f.ReadAt(p, int64(off))
}

func (s *streamStore) close() {
	s.closed = true
	if s.f != nil {
		s.f.Close()
	}
}
