package freeze

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FIFREEZE and FITHAW from linux/fs.h: _IOWR('X', 119/120, int), the same
// number on every architecture.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

type linuxFS struct{}

func newFSOps() fsOps { return linuxFS{} }

// open opens a mount point for the ioctls. O_NONBLOCK so a FIFO bind mount
// cannot block the open; only directories and regular files are used.
func openMount(mountPoint string) (int, uint64, error) {
	fd, err := unix.Open(mountPoint, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, &os.PathError{Op: "open", Path: mountPoint, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, 0, &os.PathError{Op: "fstat", Path: mountPoint, Err: err}
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFDIR && t != unix.S_IFREG {
		unix.Close(fd)
		return -1, st.Dev, &os.PathError{Op: "freeze", Path: mountPoint, Err: syscall.EOPNOTSUPP}
	}
	return fd, st.Dev, nil
}

func (linuxFS) syncfs(mountPoint string) error {
	fd, _, err := openMount(mountPoint)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

func (linuxFS) freeze(mountPoint string) (uint64, error) {
	fd, dev, err := openMount(mountPoint)
	if err != nil {
		return dev, err
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, ioctlFIFREEZE, 0); err != nil {
		return dev, err // bare errno: the caller tells EOPNOTSUPP and EBUSY apart
	}
	return dev, nil
}

func (linuxFS) thaw(mountPoint string) (int, error) {
	fd, _, err := openMount(mountPoint)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	// Each FIFREEZE (ours or anyone's) needs its own FITHAW; EINVAL means
	// "not frozen". The bound only guards against a kernel that never says so.
	for n := 0; n < 64; n++ {
		err := unix.IoctlSetInt(fd, ioctlFITHAW, 0)
		if errors.Is(err, unix.EINVAL) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("FITHAW %s: %w", mountPoint, err)
		}
	}
	return 64, fmt.Errorf("FITHAW %s: still frozen after 64 thaws", mountPoint)
}

func (linuxFS) dev(path string) (uint64, error) {
	p := filepath.Clean(path)
	for {
		var st unix.Stat_t
		err := unix.Stat(p, &st)
		if err == nil {
			return st.Dev, nil
		}
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
			return 0, &os.PathError{Op: "stat", Path: p, Err: err}
		}
		parent := filepath.Dir(p)
		if parent == p {
			return 0, &os.PathError{Op: "stat", Path: p, Err: err}
		}
		p = parent
	}
}

func (linuxFS) mkdev(major, minor uint32) uint64 { return unix.Mkdev(major, minor) }

// waitStarter waits for its own children; for processes without a global
// reaper (tests, tools).
type waitStarter struct{}

func (waitStarter) Start(start func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	go func() {
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err != unix.EINTR {
				break
			}
		}
		ch <- ws
	}()
	return pid, ch, nil
}

const hookOutputMax = 4 << 10

// runHookProcess runs path with argument phase in its own process group,
// stdin from /dev/null, stdout+stderr captured (up to 4 KiB). On timeout or
// cancellation the whole group is killed.
func runHookProcess(ctx context.Context, st Starter, path, phase string) (string, error) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return "", status.Errorf(codes.Internal, "hook %s: %v", path, err)
	}
	defer devnull.Close()
	rd, wr, err := os.Pipe()
	if err != nil {
		return "", status.Errorf(codes.Internal, "hook %s: %v", path, err)
	}
	defer rd.Close()
	attr := &syscall.ProcAttr{
		Dir:   "/", // never a directory on a filesystem about to be frozen
		Env:   append(os.Environ(), "SAILBOX_FREEZE_PHASE="+phase),
		Files: []uintptr{devnull.Fd(), wr.Fd(), wr.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	pid, exited, err := st.Start(func() (int, error) { return syscall.ForkExec(path, []string{path, phase}, attr) })
	wr.Close()
	if err != nil {
		return "", status.Errorf(codes.Internal, "hook %s %s: start: %v", path, phase, err)
	}
	outc := make(chan []byte, 1)
	go func() {
		var b bytes.Buffer
		io.Copy(&b, io.LimitReader(rd, hookOutputMax))
		io.Copy(io.Discard, rd)
		outc <- b.Bytes()
	}()

	var ws unix.WaitStatus
	var ctxErr error
	select {
	case ws = <-exited:
	case <-ctx.Done():
		ctxErr = ctx.Err()
		unix.Kill(-pid, unix.SIGKILL)
		ws = <-exited
	}
	// A daemon started by the hook may keep the pipe open: do not wait for it.
	var out []byte
	select {
	case out = <-outc:
	case <-time.After(200 * time.Millisecond):
		rd.SetReadDeadline(time.Now())
		out = <-outc
	}
	text := strings.TrimSpace(string(out))
	switch {
	case errors.Is(ctxErr, context.DeadlineExceeded):
		return text, status.Errorf(codes.DeadlineExceeded, "hook %s %s: timed out", path, phase)
	case ctxErr != nil:
		return text, status.Errorf(codes.Canceled, "hook %s %s: %v", path, phase, ctxErr)
	case ws.Signaled():
		return text, status.Errorf(codes.Aborted, "hook %s %s: killed by %v: %s", path, phase, ws.Signal(), tail(text))
	case ws.ExitStatus() != 0:
		return text, status.Errorf(codes.Aborted, "hook %s %s: exit status %d: %s", path, phase, ws.ExitStatus(), tail(text))
	}
	return text, nil
}

func tail(s string) string {
	if len(s) > 512 {
		return "..." + s[len(s)-512:]
	}
	return s
}
