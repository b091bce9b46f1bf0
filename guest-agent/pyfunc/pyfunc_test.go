package pyfunc

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testModule is importable by the "guest" python through PYTHONPATH.
const testModule = `
import os, sys, time
class Custom(Exception):
    pass
def greet(name, punct="!"):
    return "hello " + name + punct
def boom(x):
    raise ValueError("bad value %r" % (x,))
def custom():
    raise Custom("mine")
def chatty(n):
    print("out line")
    print("err line", file=sys.stderr)
    return n * 2
def sleepy(s):
    print("going to sleep", flush=True)
    time.sleep(s)
    return "woke"
def huge():
    raise ValueError("z" * 5000000)
def die():
    os._exit(7)
def big(n):
    return b"x" * n
`

// pidStarter waits for exactly the child it started. The agent's global
// reaper would also reap the children os/exec starts in these tests.
type pidStarter struct{}

func (pidStarter) Start(start func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	go func() {
		var ws unix.WaitStatus
		for {
			if _, err := unix.Wait4(pid, &ws, 0, nil); err != unix.EINTR {
				break
			}
		}
		ch <- ws
	}()
	return pid, ch, nil
}

var rp pidStarter

func testRunner(t *testing.T) (*Runner, string) {
	t.Helper()
	testcap.Command(t, "python3")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sbfuncs.py"), []byte(testModule), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PYTHONPATH", dir)
	return &Runner{Starter: rp}, dir
}

// pickled returns pickle.dumps(expr) made by the host's python3.
func pickled(t *testing.T, expr string) []byte {
	t.Helper()
	cmd := exec.Command("python3", "-c", "import pickle, sys, operator, sbfuncs; sys.stdout.buffer.write(pickle.dumps("+expr+"))")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pickle %s: %v", expr, err)
	}
	return out
}

// unpickled returns repr(pickle.loads(b)).
func unpickled(t *testing.T, b []byte) string {
	t.Helper()
	cmd := exec.Command("python3", "-c", "import pickle, sys; print(repr(pickle.loads(sys.stdin.buffer.read())), end='')")
	cmd.Stdin = strings.NewReader(string(b))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("unpickle: %v", err)
	}
	return string(out)
}

func TestCallReturnsValues(t *testing.T) {
	r, _ := testRunner(t)
	for expr, want := range map[string]string{
		"(operator.add, (2, 3), {})":                    "5",
		"(sbfuncs.greet, ('sandbox',), {'punct': '?'})": "'hello sandbox?'",
		"(sbfuncs.big, (1000,), None)":                  "b'" + strings.Repeat("x", 1000) + "'",
		"(sorted, ([3, 1, 2],), {'reverse': True})":     "[3, 2, 1]",
		"(dict, (), {'a': 1})":                          "{'a': 1}",
	} {
		res, err := r.Run(context.Background(), Call{Payload: pickled(t, expr)})
		if err != nil || res.Exception != nil {
			t.Fatalf("%s: %v %+v", expr, err, res.Exception)
		}
		if got := unpickled(t, res.Value); got != want {
			t.Errorf("%s: got %s, want %s", expr, got, want)
		}
	}
}

func TestCallExceptionsAndPrints(t *testing.T) {
	r, _ := testRunner(t)
	res, err := r.Run(context.Background(), Call{Payload: pickled(t, "(sbfuncs.boom, (42,), {})")})
	if err != nil || res.Exception == nil || res.Value != nil {
		t.Fatalf("boom: %v %+v", err, res)
	}
	ex := res.Exception
	if ex.Type != "ValueError" || ex.Message != "bad value 42" ||
		!strings.Contains(ex.Traceback, "Traceback (most recent call last)") ||
		!strings.Contains(ex.Traceback, `sbfuncs.py", line 8, in boom`) ||
		!strings.HasSuffix(strings.TrimSpace(ex.Traceback), "ValueError: bad value 42") {
		t.Errorf("exception %+v", ex)
	}
	res, _ = r.Run(context.Background(), Call{Payload: pickled(t, "(sbfuncs.custom, (), {})")})
	if res.Exception == nil || res.Exception.Type != "sbfuncs.Custom" || res.Exception.Message != "mine" {
		t.Errorf("custom: %+v", res.Exception)
	}

	res, err = r.Run(context.Background(), Call{Payload: pickled(t, "(sbfuncs.chatty, (21,), {})")})
	if err != nil || unpickled(t, res.Value) != "42" || string(res.Stdout) != "out line\n" || string(res.Stderr) != "err line\n" {
		t.Errorf("chatty: %v value %q stdout %q stderr %q", err, res.Value, res.Stdout, res.Stderr)
	}

	// A result that cannot be pickled is an exception too.
	res, err = r.Run(context.Background(), Call{Payload: pickled(t, "(open, ('/dev/null',), {})")})
	if err != nil || res.Exception == nil || res.Exception.Type != "TypeError" || !strings.Contains(res.Exception.Message, "cannot pickle") {
		t.Errorf("unpicklable result: %v %+v", err, res.Exception)
	}
	// A huge exception message is cut, not an oversized answer.
	res, err = r.Run(context.Background(), Call{Payload: pickled(t, "(sbfuncs.huge, (), {})")})
	if err != nil || res.Exception == nil || len(res.Exception.Message) > 70000 || len(res.Exception.Traceback) > 300000 ||
		!strings.Contains(res.Exception.Traceback, "in huge\n") || !strings.Contains(res.Exception.Traceback, "ValueError: zzzz") {
		t.Fatalf("huge exception: %v, %+v", err, res.Exception != nil)
	}
	// A payload that is not a call, and garbage.
	res, err = r.Run(context.Background(), Call{Payload: pickled(t, "42")})
	if err != nil || res.Exception == nil || res.Exception.Type != "TypeError" {
		t.Errorf("not a call: %v %+v", err, res.Exception)
	}
	res, err = r.Run(context.Background(), Call{Payload: []byte("not a pickle")})
	if err != nil || res.Exception == nil || !strings.Contains(res.Exception.Type, "UnpicklingError") {
		t.Errorf("garbage: %v %+v", err, res.Exception)
	}
}

func TestCallLimitsAndFailures(t *testing.T) {
	r, _ := testRunner(t)
	_, err := r.Run(context.Background(), Call{Payload: make([]byte, MaxPayload+1)})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "write large data to a file") {
		t.Errorf("oversized payload: %v", err)
	}
	_, err = r.Run(context.Background(), Call{Payload: pickled(t, "(sbfuncs.big, (3*1024*1024+10,), {})")})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "return its path") {
		t.Errorf("oversized result: %v", err)
	}
	_, err = r.Run(context.Background(), Call{Payload: pickled(t, "(sbfuncs.die, (), {})")})
	if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "exited with status 7") {
		t.Errorf("os._exit: %v", err)
	}
	start := time.Now()
	res, err := r.Run(context.Background(), Call{Payload: pickled(t, "(sbfuncs.sleepy, (60,), {})"), Timeout: 3 * time.Second})
	if err != nil || !res.TimedOut || res.Value != nil || string(res.Stdout) != "going to sleep\n" {
		t.Errorf("timeout: %v %+v", err, res)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("timeout took %v", d)
	}
	missing := &Runner{Python: "/nonexistent/python3", Starter: rp}
	_, err = missing.Run(context.Background(), Call{Payload: []byte("x")})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--python") {
		t.Errorf("missing python: %v", err)
	}
}
