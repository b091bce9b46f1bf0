package execengine

import (
	"context"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/guest-agent/spool"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Status is an exec's observable state.
type Status struct {
	ID        string
	State     State
	Pid       int
	ExitCode  int // -1 when killed by a signal
	Signal    syscall.Signal
	TimedOut  bool
	Started   time.Time
	Ended     time.Time
	Stdout    spool.Info
	Stderr    spool.Info
	Command   string
	TTY       bool
	finalKeep [2]uint64
}

// Exec is one started command.
type Exec struct {
	id          string
	spec        Spec
	fingerprint [32]byte
	pid         int
	started     time.Time

	stdout, stderr *spool.Spool
	proc           process // the OS side: stdin, pty, signals

	done chan struct{} // closed when the exec reached a final state

	mu       sync.Mutex
	state    State
	ws       unix.WaitStatus
	timedOut bool
	ended    time.Time
	// Spool sizes when the exec finished: a follower stops there even if a
	// background grandchild keeps writing to the inherited pipe.
	finalKept [2]uint64
	timeout   *time.Timer
}

// process is the OS side of a running exec.
type process interface {
	signalGroup(sig syscall.Signal) error
	writeStdin(ctx context.Context, p []byte) (int, error)
	closeStdin() error
	resize(rows, cols uint16) error
	// release closes what the exec held open once it has finished.
	release()
}

// ID returns the exec id.
func (e *Exec) ID() string { return e.id }

// Done is closed when the exec has finished and its output is drained.
func (e *Exec) Done() <-chan struct{} { return e.done }

// Stdout and Stderr return the exec's output spools. A tty exec writes
// everything to Stdout.
func (e *Exec) Stdout() *spool.Spool { return e.stdout }
func (e *Exec) Stderr() *spool.Spool { return e.stderr }

// Status returns a snapshot of the exec's state.
func (e *Exec) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := Status{
		ID: e.id, State: e.state, Pid: e.pid, Started: e.started, Ended: e.ended,
		Stdout: e.stdout.Info(), Stderr: e.stderr.Info(), Command: e.spec.display(),
		TTY: e.spec.TTY, TimedOut: e.timedOut, finalKeep: e.finalKept,
	}
	if e.state.Final() {
		switch {
		case e.ws.Exited():
			st.ExitCode = e.ws.ExitStatus()
		case e.ws.Signaled():
			st.ExitCode = -1
			st.Signal = e.ws.Signal()
		}
	}
	return st
}

// FinalKept returns the spool sizes at finish, and whether it has finished.
func (e *Exec) FinalKept() (stdout, stderr uint64, finished bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.finalKept[0], e.finalKept[1], e.state.Final()
}

// Wait blocks until the exec has finished or ctx ends.
func (e *Exec) Wait(ctx context.Context) (Status, error) {
	select {
	case <-e.done:
		return e.Status(), nil
	case <-ctx.Done():
		return Status{}, status.FromContextError(ctx.Err()).Err()
	}
}

// Signal delivers sig to the exec's process group.
func (e *Exec) Signal(sig syscall.Signal) error {
	e.mu.Lock()
	final := e.state.Final()
	e.mu.Unlock()
	if final {
		return status.Errorf(codes.FailedPrecondition, "exec %s has already finished", e.id)
	}
	if err := e.proc.signalGroup(sig); err != nil {
		return status.Errorf(codes.Internal, "signal exec %s: %v", e.id, err)
	}
	return nil
}

// WriteStdin writes to the exec's stdin.
func (e *Exec) WriteStdin(ctx context.Context, p []byte) (int, error) {
	if !e.spec.Stdin {
		return 0, status.Errorf(codes.FailedPrecondition, "exec %s was started without stdin", e.id)
	}
	return e.proc.writeStdin(ctx, p)
}

// CloseStdin closes the exec's stdin.
func (e *Exec) CloseStdin() error {
	if !e.spec.Stdin {
		return status.Errorf(codes.FailedPrecondition, "exec %s was started without stdin", e.id)
	}
	return e.proc.closeStdin()
}

// Resize sets the pty window size.
func (e *Exec) Resize(rows, cols uint16) error {
	if !e.spec.TTY {
		return status.Errorf(codes.FailedPrecondition, "exec %s has no tty", e.id)
	}
	rows, cols = defaultSize(rows, cols)
	return e.proc.resize(rows, cols)
}

// finish records the exit once the process has exited and its output is
// drained (or the drain grace has passed). It runs once per exec (its
// supervise goroutine); a second call is refused by the state machine and
// reported, never applied.
func (e *Exec) finish(ws unix.WaitStatus) error {
	e.mu.Lock()
	to := StateExited
	if e.timedOut {
		to = StateTimedOut
	}
	if err := e.state.transition(to); err != nil {
		e.mu.Unlock()
		return fmt.Errorf("exec %s: %w", e.id, err)
	}
	e.state = to
	e.ws = ws
	e.ended = time.Now()
	e.finalKept = [2]uint64{e.stdout.Info().Kept, e.stderr.Info().Kept}
	if e.timeout != nil {
		// The SIGKILL follow-up of a timeout is left alone: it catches stragglers.
		e.timeout.Stop()
	}
	e.mu.Unlock()
	e.proc.release()
	close(e.done)
	return nil
}

func defaultSize(rows, cols uint16) (uint16, uint16) {
	if rows == 0 {
		rows = 24
	}
	if cols == 0 {
		cols = 80
	}
	return rows, cols
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
