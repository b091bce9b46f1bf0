package cli_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/agenttest"
)

// runCLI runs the built host-supervisor and returns stdout, stderr and the
// exit status.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(agenttest.Supervisor(t), args...)
	cmd.Env = agenttest.Env()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run host-supervisor %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// wait-listener against a real agent: ready → exit 0 with what was seen;
// not ready → exit 125 with "error: DeadlineExceeded: ...".
func TestWaitListenerCLI(t *testing.T) {
	a := agenttest.Start(t)

	// An HTTP server that starts listening only after the wait began.
	port := freePort(t)
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Errorf("listen on %d: %v", port, err)
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
		t.Cleanup(func() { srv.Close() })
		go srv.Serve(ln)
	}()
	out, errOut, code := runCLI(t, "wait-listener", "--agent", a.Addr, "--port", fmt.Sprint(port), "--protocol", "http", "--timeout", "20s")
	want := fmt.Sprintf(`ready port=%d protocol=http bind=127.0.0.1:%d banner="HTTP/1.1 200 OK" elapsed=`, port, port)
	if code != 0 || !strings.HasPrefix(out, want) {
		t.Errorf("http: exit %d, stdout %q, stderr %q; want 0 and %q...", code, out, errOut, want)
	}

	// Nothing listening.
	idle := freePort(t)
	out, errOut, code = runCLI(t, "wait-listener", "--agent", a.Addr, "--port", fmt.Sprint(idle), "--timeout", "300ms")
	if code != 125 || out != "" || !strings.HasPrefix(errOut, "error: DeadlineExceeded: ") ||
		!strings.Contains(errOut, fmt.Sprintf("nothing listening on port %d", idle)) {
		t.Errorf("idle port: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	// A silent accept loop is listening (tcp) but is no SSH server.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go io.Copy(io.Discard, c)
		}
	}()
	silent := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	out, errOut, code = runCLI(t, "wait-listener", "--agent", a.Addr, "--port", silent, "--protocol", "ssh", "--timeout", "0.3")
	if code != 125 || !strings.HasPrefix(errOut, "error: DeadlineExceeded: ") || !strings.Contains(errOut, "but no banner") {
		t.Errorf("silent ssh: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = runCLI(t, "wait-listener", "--agent", a.Addr, "--port", silent)
	if code != 0 || !strings.Contains(out, "protocol=tcp bind=127.0.0.1:"+silent) {
		t.Errorf("silent tcp (the default protocol): exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	for _, args := range [][]string{
		{"--port", "0"},
		{"--port", "80", "--protocol", "udp"},
		{"--port", "80", "--timeout", "-1s"},
		{"--port", "80", "extra"},
	} {
		_, errOut, code := runCLI(t, append([]string{"wait-listener", "--agent", a.Addr}, args...)...)
		if code != 125 || !strings.HasPrefix(errOut, "error: InvalidArgument: ") {
			t.Errorf("%v: exit %d, stderr %q; want 125 InvalidArgument", args, code, errOut)
		}
	}
}
