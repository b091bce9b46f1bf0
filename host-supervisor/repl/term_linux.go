package repl

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// stdinReader reads a terminal without leaving a read pending when it is
// stopped: a goroutine blocked in read(2) would steal the next keystroke
// from the line editor after a shell session ends. It polls the terminal
// and a pipe; Stop writes to the pipe.
type stdinReader struct {
	fd   int
	r, w *os.File
}

func newStdinReader(fd int) (*stdinReader, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	return &stdinReader{fd: fd, r: r, w: w}, nil
}

// Read returns io.EOF once Stop was called.
func (s *stdinReader) Read(b []byte) (int, error) {
	for {
		fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}, {Fd: int32(s.r.Fd()), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err == unix.EINTR {
			continue
		} else if err != nil {
			return 0, err
		}
		if fds[1].Revents != 0 {
			return 0, io.EOF
		}
		if fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) == 0 {
			continue
		}
		n, err := unix.Read(s.fd, b)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// Stop makes a pending and every later Read return io.EOF.
func (s *stdinReader) Stop() { s.w.Write([]byte{0}) }

// Close releases the pipe; call it after the reading goroutine has ended.
func (s *stdinReader) Close() {
	s.r.Close()
	s.w.Close()
}
