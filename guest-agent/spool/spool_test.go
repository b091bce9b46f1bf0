package spool

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// The file appears with the first kept byte; a spool never written has no
// file and reads as empty; Remove works either way.
func TestFileCreatedOnFirstWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.stdout")
	s, err := Create(p, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spool file exists before any write: %v", err)
	}
	buf := make([]byte, 16)
	if n, err := s.ReadAt(buf, 0); n != 0 || err != io.EOF {
		t.Fatalf("empty spool read: %d, %v", n, err)
	}
	if _, err := s.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("spool file after a write: %v", err)
	}
	if n, err := s.ReadAt(buf, 1); string(buf[:n]) != "ello" || (err != nil && err != io.EOF) {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if err := s.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("spool file after Remove: %v", err)
	}

	empty, _ := Create(filepath.Join(dir, "y.stdout"), 1<<20)
	empty.CloseWrite()
	if err := empty.Remove(); err != nil {
		t.Fatalf("remove a spool never written: %v", err)
	}
}

// Past the cap bytes are counted, not kept; a cap of zero never creates a file.
func TestCap(t *testing.T) {
	dir := t.TempDir()
	s, _ := Create(filepath.Join(dir, "c"), 4)
	s.Write([]byte("abcdef"))
	if i := s.Info(); i.Kept != 4 || i.Total != 6 || !i.Truncated {
		t.Fatalf("info %+v", i)
	}
	z, _ := Create(filepath.Join(dir, "z"), 0)
	z.Write([]byte("abc"))
	if _, err := os.Stat(filepath.Join(dir, "z")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("zero-cap spool created a file: %v", err)
	}
	if i := z.Info(); i.Kept != 0 || i.Total != 3 || !i.Truncated || i.WriteErr != nil {
		t.Fatalf("zero-cap info %+v", i)
	}
}
