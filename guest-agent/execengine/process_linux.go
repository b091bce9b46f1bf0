package execengine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/sailbox/sailbox/guest-agent/reaper"
	"github.com/sailbox/sailbox/guest-agent/spool"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// started is a freshly started process.
type started struct {
	pid     int
	proc    *osProcess
	exited  <-chan unix.WaitStatus
	drained <-chan struct{} // closed when every output copier reached EOF
}

// osProcess implements process for a Linux child in its own process group.
type osProcess struct {
	pgid int

	mu    sync.Mutex
	stdin *os.File // our end of the stdin pipe; nil without stdin
	ptmx  *os.File // pty master (pollable); nil without a tty
}

const (
	copyBufSize = 256 << 10
	pipeSize    = 1 << 20
	smallPipe   = 64 << 10 // Linux's default pipe capacity
)

// devNull is the stdin of every exec without one, opened once: each child
// gets its own dup of it at fork.
var devNull = sync.OnceValues(func() (*os.File, error) { return os.Open(os.DevNull) })

// Copy buffers are taken only when a pipe is readable, so thousands of idle
// execs hold no buffers.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

func startProcess(r *reaper.Reaper, prog string, argv, env []string, spec Spec, stdout, stderr *spool.Spool) (*started, error) {
	var (
		childFiles []uintptr
		toClose    []*os.File // child ends, closed in the parent after the fork
		readers    []*os.File // our read ends, one per spool
		spools     []*spool.Spool
		proc       = &osProcess{}
		sys        = &syscall.SysProcAttr{Setpgid: true}
	)
	fail := func(err error) (*started, error) {
		for _, f := range append(toClose, readers...) {
			f.Close()
		}
		if proc.stdin != nil {
			proc.stdin.Close()
		}
		if proc.ptmx != nil {
			proc.ptmx.Close()
		}
		return nil, err
	}

	if spec.TTY {
		ptmx, tty, err := openPty(defaultSize(spec.Rows, spec.Cols))
		if err != nil {
			return fail(fmt.Errorf("open pty: %w", err))
		}
		proc.ptmx = ptmx
		toClose = append(toClose, tty)
		childFiles = []uintptr{tty.Fd(), tty.Fd(), tty.Fd()}
		sys = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		readers = append(readers, ptmx)
		spools = append(spools, stdout)
		stderr.CloseWrite()
	} else {
		if spec.Stdin {
			rd, wr, err := pipe(false)
			if err != nil {
				return fail(err)
			}
			proc.stdin = wr
			toClose = append(toClose, rd)
			childFiles = append(childFiles, rd.Fd())
		} else {
			devnull, err := devNull()
			if err != nil {
				return fail(err)
			}
			childFiles = append(childFiles, devnull.Fd())
		}
		for _, sp := range []*spool.Spool{stdout, stderr} {
			rd, wr, err := pipe(true)
			if err != nil {
				return fail(err)
			}
			toClose = append(toClose, wr)
			readers = append(readers, rd)
			spools = append(spools, sp)
			childFiles = append(childFiles, wr.Fd())
		}
	}

	attr := &syscall.ProcAttr{Dir: spec.Cwd, Env: env, Files: childFiles, Sys: sys}
	pid, exited, err := r.Start(func() (int, error) { return syscall.ForkExec(prog, argv, attr) })
	for _, f := range toClose {
		f.Close()
	}
	toClose = nil
	if err != nil {
		return fail(err)
	}
	proc.pgid = pid

	drained := make(chan struct{})
	// The last copier to finish closes drained (no waiter goroutine: one
	// handoff less between the exit and the reply).
	left := atomic.Int32{}
	left.Store(int32(len(readers)))
	for i, rd := range readers {
		go func(rd *os.File, sp *spool.Spool, isPty bool) {
			copyOutput(rd, sp)
			sp.CloseWrite()
			if !isPty { // the pty master is closed by release
				rd.Close()
			}
			if left.Add(-1) == 0 {
				close(drained)
			}
		}(rd, spools[i], spec.TTY)
	}
	return &started{pid: pid, proc: proc, exited: exited, drained: drained}, nil
}

// pipe returns a pipe whose parent-side end is pollable (non-blocking) and
// whose child-side end stays blocking, as programs expect of their stdio.
func pipe(parentReads bool) (rd, wr *os.File, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, fmt.Errorf("pipe: %w", err)
	}
	parent := p[1]
	if parentReads {
		parent = p[0] // copyOutput enlarges it once it sees the pipe fill
	}
	if err := unix.SetNonblock(parent, true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, nil, err
	}
	return os.NewFile(uintptr(p[0]), "pipe-r"), os.NewFile(uintptr(p[1]), "pipe-w"), nil
}

// openPty opens a pty pair and returns a pollable master and the tty.
func openPty(rows, cols uint16) (*os.File, *os.File, error) {
	master, tty, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	defer master.Close()
	// Re-wrap the master as a non-blocking file so reads are pollable and a
	// Close interrupts them (an *os.File's Fd() would switch it to blocking).
	var dup int
	var derr error
	rc, err := master.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	}
	if err == nil {
		err = derr
	}
	if err != nil {
		tty.Close()
		return nil, nil, err
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		tty.Close()
		return nil, nil, err
	}
	if err := unix.IoctlSetWinsize(dup, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		unix.Close(dup)
		tty.Close()
		return nil, nil, err
	}
	return os.NewFile(uintptr(dup), "ptmx"), tty, nil
}

// spliceMax is the most one splice moves from an output pipe to its spool.
const spliceMax = pipeSize

// copyOutput drains src into dst until EOF (or EIO: a pty whose other side
// has closed). From a pipe it splices (no copy through user space) until the
// spool cannot take more (the cap), then reads and counts the rest.
func copyOutput(src *os.File, dst *spool.Spool) {
	rc, err := src.SyscallConn()
	if err != nil {
		return
	}
	grown := false
	for {
		var (
			n    int
			serr error
		)
		err := rc.Read(func(fd uintptr) bool {
			n, serr = dst.Splice(int(fd), spliceMax)
			if n >= smallPipe && !grown {
				// A full pipe: a fast writer. A bigger pipe means more per
				// splice; most execs print little and never pay for it.
				unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize)
				grown = true
			}
			return serr != unix.EAGAIN
		})
		if err != nil {
			return // closed by release
		}
		if errors.Is(serr, spool.ErrNoSplice) {
			break
		}
		if serr == unix.EINTR {
			continue
		}
		if serr != nil || n == 0 {
			return
		}
	}
	for {
		var (
			n    int
			rerr error
			buf  *[]byte
		)
		err := rc.Read(func(fd uintptr) bool {
			buf = copyBufs.Get().(*[]byte)
			n, rerr = unix.Read(int(fd), *buf)
			if rerr == unix.EAGAIN {
				copyBufs.Put(buf)
				return false
			}
			return true
		})
		if err != nil {
			return // closed by release
		}
		if n > 0 {
			dst.Write((*buf)[:n])
		}
		copyBufs.Put(buf)
		switch {
		case rerr == unix.EINTR:
			continue
		case rerr != nil || n == 0:
			return
		}
	}
}

func (p *osProcess) signalGroup(sig syscall.Signal) error {
	err := unix.Kill(-p.pgid, sig)
	if errors.Is(err, unix.ESRCH) {
		return nil // the group is already gone
	}
	return err
}

func (p *osProcess) input() (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ptmx != nil {
		return p.ptmx, nil
	}
	if p.stdin == nil {
		return nil, status.Error(codes.FailedPrecondition, "stdin is closed")
	}
	return p.stdin, nil
}

func (p *osProcess) writeStdin(ctx context.Context, b []byte) (int, error) {
	f, err := p.input()
	if err != nil {
		return 0, err
	}
	if d, ok := ctx.Deadline(); ok {
		f.SetWriteDeadline(d)
		defer f.SetWriteDeadline(time.Time{})
	}
	n, err := f.Write(b)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return n, status.Errorf(codes.DeadlineExceeded, "stdin not drained in time: wrote %d of %d bytes", n, len(b))
	case errors.Is(err, syscall.EPIPE), errors.Is(err, os.ErrClosed), errors.Is(err, io.ErrClosedPipe):
		return n, status.Error(codes.FailedPrecondition, "stdin is closed (the process stopped reading)")
	}
	return n, status.Errorf(codes.Internal, "write stdin: %v", err)
}

func (p *osProcess) closeStdin() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ptmx != nil {
		// A terminal has no half-close: send the EOF character (^D).
		_, err := p.ptmx.Write([]byte{4})
		return err
	}
	if p.stdin == nil {
		return nil // idempotent
	}
	err := p.stdin.Close()
	p.stdin = nil
	return err
}

func (p *osProcess) resize(rows, cols uint16) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ptmx == nil {
		return status.Error(codes.FailedPrecondition, "no tty")
	}
	rc, err := p.ptmx.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return err
	}
	return ierr
}

func (p *osProcess) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	if p.ptmx != nil {
		p.ptmx.Close()
		p.ptmx = nil
	}
}
