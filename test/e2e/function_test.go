package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/agenttest"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// guestModule is importable by the agent's python through PYTHONPATH: the
// "image" has it installed, the host pickles references to it.
const guestModule = `
import sys, time
def greet(name, punct="!"):
    return {"greeting": "hello " + name + punct, "n": len(name)}
def boom(x):
    raise ValueError("bad value %r" % (x,))
def chatty(n):
    print("printed to stdout")
    print("printed to stderr", file=sys.stderr)
    return n * 2
def sleepy(s):
    time.sleep(s)
    return "woke"
def big(n):
    return b"x" * n
`

// funcEnv writes the module and returns its dir; PYTHONPATH points there
// for both the host's pickling and the agent started afterwards.
func funcEnv(t *testing.T) string {
	t.Helper()
	testcap.Command(t, "python3")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "sbguest.py"), []byte(guestModule), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PYTHONPATH", dir)
	return dir
}

// payload pickles expr on the host into a file and returns its path.
func payload(t *testing.T, expr string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "payload.pkl")
	cmd := exec.Command("python3", "-c", "import pickle, operator, sbguest; open('"+p+"', 'wb').write(pickle.dumps("+expr+"))")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pickle %s: %v\n%s", expr, err, out)
	}
	return p
}

// unpickle returns repr(pickle.loads(b)) computed by the host's python3.
func unpickle(t *testing.T, b []byte) string {
	t.Helper()
	cmd := exec.Command("python3", "-c", "import pickle, sys; print(repr(pickle.loads(sys.stdin.buffer.read())), end='')")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("unpickle %q: %v", b, err)
	}
	return string(out)
}

func TestCallFunctions(t *testing.T) {
	funcEnv(t)
	a := agenttest.Start(t)

	r := cli(t, nil, "call", "--agent", a.Addr, payload(t, "(operator.add, (2, 3), {})"))
	if r.code != 0 || unpickle(t, []byte(r.stdout)) != "5" || r.stderr != "" {
		t.Fatalf("operator.add: %+v", r)
	}
	r = cli(t, nil, "call", "--agent", a.Addr, payload(t, "(sbguest.greet, ('sandbox',), {'punct': '?'})"))
	if r.code != 0 || unpickle(t, []byte(r.stdout)) != "{'greeting': 'hello sandbox?', 'n': 7}" {
		t.Fatalf("module function: %+v", r)
	}
	// Payload on stdin.
	pl, _ := os.ReadFile(payload(t, "(operator.mul, (6, 7), {})"))
	if r := cli(t, bytes.NewReader(pl), "call", "--agent", a.Addr, "-"); r.code != 0 || unpickle(t, []byte(r.stdout)) != "42" {
		t.Fatalf("stdin payload: %+v", r)
	}

	// Prints come back on stderr; stdout holds only the result.
	r = cli(t, nil, "call", "--agent", a.Addr, payload(t, "(sbguest.chatty, (21,), {})"))
	if r.code != 0 || unpickle(t, []byte(r.stdout)) != "42" || r.stderr != "printed to stdout\nprinted to stderr\n" {
		t.Fatalf("prints: %+v", r)
	}
	// With --out the result goes to the file and prints keep their streams.
	out := filepath.Join(t.TempDir(), "result.pkl")
	r = cli(t, nil, "call", "--agent", a.Addr, "--out", out, payload(t, "(sbguest.chatty, (5,), {})"))
	res, _ := os.ReadFile(out)
	if r.code != 0 || r.stdout != "printed to stdout\n" || r.stderr != "printed to stderr\n" || unpickle(t, res) != "10" {
		t.Fatalf("--out: %+v, result %q", r, res)
	}

	// A remote exception: traceback on stderr, exit 1.
	r = cli(t, nil, "call", "--agent", a.Addr, payload(t, "(sbguest.boom, (42,), {})"))
	if r.code != 1 || r.stdout != "" || !strings.HasPrefix(r.stderr, "Traceback (most recent call last):\n") ||
		!strings.Contains(r.stderr, `sbguest.py", line 6, in boom`) || !strings.HasSuffix(r.stderr, "ValueError: bad value 42\n") {
		t.Fatalf("exception: %+v", r)
	}
}

func TestCallErrorsAndLimits(t *testing.T) {
	funcEnv(t)
	a := agenttest.Start(t)

	// A function that sleeps past the timeout: exit 124, like exec.
	start := time.Now()
	r := cliCtx(t, 30*time.Second, nil, "call", "--agent", a.Addr, "--timeout", "1s", payload(t, "(sbguest.sleepy, (120,), {})"))
	if r.code != 124 || !strings.HasPrefix(r.stderr, "error: DeadlineExceeded: function call timed out") {
		t.Fatalf("timeout: %+v", r)
	}
	t.Logf("timed-out call returned after %v", time.Since(start))

	// Oversized payload: refused before sending, with the advice.
	big := filepath.Join(t.TempDir(), "big.pkl")
	os.WriteFile(big, make([]byte, 3<<20+1), 0o644)
	r = cli(t, nil, "call", "--agent", a.Addr, big)
	if r.code != 125 || !strings.HasPrefix(r.stderr, "error: ResourceExhausted: ") || !strings.Contains(r.stderr, "write large data to a file") {
		t.Fatalf("oversized payload: %+v", r)
	}
	// Exactly 3 MiB is within the limit: it reaches python (as garbage,
	// it fails to unpickle there).
	cl := a.Client(t)
	ctx := context.Background()
	_, err := cl.CallFunction(ctx, &agentv1.FunctionCallRequest{Payload: make([]byte, 3<<20)})
	var re *agentclient.RemoteError
	if !asRemote(err, &re) || !strings.Contains(re.Type, "UnpicklingError") {
		t.Fatalf("3 MiB payload: %v", err)
	}
	// Oversized result.
	r = cli(t, nil, "call", "--agent", a.Addr, payload(t, "(sbguest.big, (4*1024*1024,), {})"))
	if r.code != 125 || !strings.HasPrefix(r.stderr, "error: ResourceExhausted: function result is over the 3 MiB limit") {
		t.Fatalf("oversized result: %+v", r)
	}

	// A remote exception through the client: a typed error with the prints.
	resp, err := cl.CallFunction(ctx, &agentv1.FunctionCallRequest{Payload: mustRead(t, payload(t, "(sbguest.boom, ('x',), {})"))})
	if !asRemote(err, &re) || re.Type != "ValueError" || re.Message != "bad value 'x'" || !strings.Contains(re.Traceback, "in boom") ||
		status.Code(err) != codes.Aborted || resp == nil {
		t.Fatalf("remote error: %v %+v", err, re)
	}

	// No python in the image.
	nopy := agenttest.Start(t, "--python", "/nonexistent/python3")
	r = cli(t, nil, "call", "--agent", nopy.Addr, payload(t, "(operator.add, (1, 2), {})"))
	if r.code != 125 || !strings.HasPrefix(r.stderr, `error: FailedPrecondition: python "/nonexistent/python3" not found`) {
		t.Fatalf("no python: %+v", r)
	}
	// Bad arguments.
	for _, args := range [][]string{{}, {"a", "b"}, {"--timeout", "-1", "x"}, {"/nonexistent/payload"}} {
		r := cli(t, nil, append([]string{"call", "--agent", a.Addr}, args...)...)
		if r.code != 125 || !strings.HasPrefix(r.stderr, "error: InvalidArgument: ") {
			t.Errorf("%q: %+v", args, r)
		}
	}
}

func asRemote(err error, re **agentclient.RemoteError) bool {
	e, ok := err.(*agentclient.RemoteError)
	if ok {
		*re = e
	}
	return ok
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
