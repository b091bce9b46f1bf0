package pyfunc

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

//go:embed runner.py
var runnerScript string

const (
	// MaxPayload and MaxResult keep a call and its answer under ttrpc's
	// 4 MiB message cap with room for the captured output.
	MaxPayload = 3 << 20
	MaxResult  = 3 << 20
	// OutputCap is how much of stdout and of stderr is kept.
	OutputCap = 256 << 10
	// KillGrace is the time between SIGTERM and SIGKILL after a timeout.
	KillGrace = 2 * time.Second
	// DefaultPython is looked up in PATH at each call.
	DefaultPython = "python3"
)

// Starter starts a child and delivers its wait status; the agent's reaper.
type Starter interface {
	Start(start func() (int, error)) (int, <-chan unix.WaitStatus, error)
}

// Runner runs calls.
type Runner struct {
	Python  string // path or name in PATH; "" = DefaultPython
	Starter Starter
}

// Call is one function call.
type Call struct {
	Payload []byte // pickle.dumps((callable, args, kwargs))
	Timeout time.Duration
	Cwd     string
	Env     []string // KEY=VALUE added to the agent's environment
}

// Exception is an exception raised in the guest.
type Exception struct {
	Type      string `json:"type"`
	Message   string `json:"message"`
	Traceback string `json:"traceback"`
}

// Result is a finished call. Exactly one of Value (pickled), Exception and
// TimedOut describes how it ended.
type Result struct {
	Value                        []byte
	Exception                    *Exception
	TimedOut                     bool
	Stdout, Stderr               []byte
	StdoutDropped, StderrDropped uint64
	Duration                     time.Duration
}

// Run runs c to completion. Errors are gRPC status errors: a payload or
// result over the limit is ResourceExhausted, a missing python
// FailedPrecondition, a runner that died without a record Aborted.
func (r *Runner) Run(ctx context.Context, c Call) (Result, error) {
	if len(c.Payload) > MaxPayload {
		return Result{}, status.Errorf(codes.ResourceExhausted,
			"function payload is %d bytes, over the %d MiB limit: write large data to a file in the sandbox and pass its path instead", len(c.Payload), MaxPayload>>20)
	}
	if len(c.Payload) == 0 {
		return Result{}, status.Error(codes.InvalidArgument, "empty function payload")
	}
	if c.Timeout < 0 {
		return Result{}, status.Errorf(codes.InvalidArgument, "negative timeout %v", c.Timeout)
	}
	name := r.Python
	if name == "" {
		name = DefaultPython
	}
	python, err := exec.LookPath(name)
	if err != nil {
		return Result{}, status.Errorf(codes.FailedPrecondition,
			"python %q not found (%v): install python3 in the image or start the agent with --python PATH", name, err)
	}
	if c.Cwd != "" {
		if fi, err := os.Stat(c.Cwd); err != nil || !fi.IsDir() {
			return Result{}, status.Errorf(codes.InvalidArgument, "cwd %q is not a directory", c.Cwd)
		}
	}
	for _, kv := range c.Env {
		if !strings.Contains(kv, "=") {
			return Result{}, status.Errorf(codes.InvalidArgument, "env entry %q is not KEY=VALUE", kv)
		}
	}

	var parent, child []*os.File
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	// stdin, stdout, stderr, result (fd 3).
	for i, parentReads := range []bool{false, true, true, true} {
		rd, wr, err := pipe(parentReads)
		if err != nil {
			closeAll(parent)
			closeAll(child)
			return Result{}, status.Errorf(codes.Internal, "function call: pipe %d: %v", i, err)
		}
		if parentReads {
			parent, child = append(parent, rd), append(child, wr)
		} else {
			parent, child = append(parent, wr), append(child, rd)
		}
	}
	attr := &syscall.ProcAttr{
		Dir:   c.Cwd,
		Env:   append(os.Environ(), c.Env...),
		Files: []uintptr{child[0].Fd(), child[1].Fd(), child[2].Fd(), child[3].Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	argv := []string{python, "-u", "-c", runnerScript}
	began := time.Now()
	pid, exited, err := r.Starter.Start(func() (int, error) { return syscall.ForkExec(python, argv, attr) })
	closeAll(child)
	if err != nil {
		closeAll(parent)
		return Result{}, status.Errorf(codes.FailedPrecondition, "start %s: %v", python, err)
	}
	stdin, stdout, stderr, record := parent[0], parent[1], parent[2], parent[3]
	go func() {
		stdin.Write(c.Payload) // fails only if the runner died; its status says why
		stdin.Close()
	}()
	type capture struct {
		data    []byte
		dropped uint64
	}
	collect := func(f *os.File, limit int64) <-chan capture {
		ch := make(chan capture, 1)
		go func() {
			var b bytes.Buffer
			io.Copy(&b, io.LimitReader(f, limit))
			n, _ := io.Copy(io.Discard, f)
			f.Close()
			ch <- capture{b.Bytes(), uint64(n)}
		}()
		return ch
	}
	outc, errc, recc := collect(stdout, OutputCap), collect(stderr, OutputCap), collect(record, MaxResult+1)

	var timeout <-chan time.Time
	if c.Timeout > 0 {
		t := time.NewTimer(c.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	var ws unix.WaitStatus
	var res Result
	var canceled error
	select {
	case ws = <-exited:
	case <-timeout:
		res.TimedOut = true
		unix.Kill(-pid, unix.SIGTERM)
		select {
		case ws = <-exited:
		case <-time.After(KillGrace):
			unix.Kill(-pid, unix.SIGKILL)
			ws = <-exited
		}
	case <-ctx.Done():
		canceled = ctx.Err()
		unix.Kill(-pid, unix.SIGKILL)
		ws = <-exited
	}
	res.Duration = time.Since(began)
	// Whatever the function left running in its group goes too, so nothing
	// holds the pipes open.
	unix.Kill(-pid, unix.SIGKILL)
	for _, f := range []*os.File{stdout, stderr, record} {
		f.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	}
	o, e, rec := <-outc, <-errc, <-recc
	res.Stdout, res.StdoutDropped, res.Stderr, res.StderrDropped = o.data, o.dropped, e.data, e.dropped
	if canceled != nil {
		return res, status.FromContextError(canceled).Err()
	}
	if res.TimedOut {
		return res, nil
	}
	if rec.dropped > 0 || len(rec.data) > MaxResult {
		return res, status.Errorf(codes.ResourceExhausted,
			"function result is over the %d MiB limit: write large data to a file in the sandbox and return its path instead", MaxResult>>20)
	}
	switch {
	case len(rec.data) > 0 && rec.data[0] == 'R':
		res.Value = rec.data[1:]
		return res, nil
	case len(rec.data) > 0 && rec.data[0] == 'E':
		var ex Exception
		if err := json.Unmarshal(rec.data[1:], &ex); err != nil {
			return res, status.Errorf(codes.Internal, "function runner: bad exception record: %v", err)
		}
		res.Exception = &ex
		return res, nil
	}
	how := fmt.Sprintf("exited with status %d", ws.ExitStatus())
	if ws.Signaled() {
		how = "was killed by " + ws.Signal().String()
	}
	return res, status.Errorf(codes.Aborted, "python function %s without returning a result%s", how, stderrTail(res.Stderr))
}

func stderrTail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	return ": " + s
}

// pipe returns a pipe whose parent-side end is pollable (non-blocking, so
// reads can be cut off by a deadline) and whose child-side end stays
// blocking, as python expects of its stdio.
func pipe(parentReads bool) (rd, wr *os.File, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, nil, err
	}
	parent := p[1]
	if parentReads {
		parent = p[0]
	}
	if err := unix.SetNonblock(parent, true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, nil, err
	}
	return os.NewFile(uintptr(p[0]), "|0"), os.NewFile(uintptr(p[1]), "|1"), nil
}
