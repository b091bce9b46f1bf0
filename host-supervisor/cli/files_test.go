package cli_test

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/creack/pty"
	"github.com/sailbox/sailbox/internal/agenttest"
)

// A large transfer shows a progress line when stderr is a terminal; stdout
// carries only the data.
func TestProgressLineOnTerminalOnly(t *testing.T) {
	a := agenttest.Start(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, bytes.Repeat([]byte("p"), 40<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	run := func(stdin *os.File, args ...string) (string, string) {
		t.Helper()
		ptmx, tty, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		cmd := exec.Command(agenttest.Supervisor(t), args...)
		cmd.Env = agenttest.Env()
		var out bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, tty
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		tty.Close()
		var term bytes.Buffer
		io.Copy(&term, ptmx) // ends with EIO once the child is gone
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, term.String())
		}
		return out.String(), term.String()
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	_, term := run(in, "write", "--agent", a.Addr, dst)
	if !regexp.MustCompile(`\rwrite ` + regexp.QuoteMeta(dst) + `: 40\.0 MiB of 40\.0 MiB \(100%\), [0-9.]+ MB/s`).MatchString(term) {
		t.Errorf("write progress on the terminal: %q", term)
	}
	out, term := run(nil, "read", "--agent", a.Addr, dst)
	if len(out) != 40<<20 || !regexp.MustCompile(`\rread `+regexp.QuoteMeta(dst)+`: 40\.0 MiB of 40\.0 MiB \(100%\)`).MatchString(term) {
		t.Errorf("read: %d bytes on stdout, terminal %q", len(out), term)
	}
	// A small transfer shows nothing.
	small := filepath.Join(dir, "small")
	os.WriteFile(small, []byte("s"), 0o644)
	if out, term := run(nil, "read", "--agent", a.Addr, small); out != "s" || term != "" {
		t.Errorf("small read: stdout %q, terminal %q", out, term)
	}
}
