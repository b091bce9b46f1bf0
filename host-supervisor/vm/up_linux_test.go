package vm

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestRunUp is `host-supervisor vm up` with an ext4 data disk: the agent
// answers at the printed address, the disk is mounted at /data, and
// cancelling powers the VM off cleanly.
func TestRunUp(t *testing.T) {
	needVM(t)
	testcap.Command(t, "mkfs.ext4")
	testKernel(t)
	bin := guestBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	data := t.TempDir()
	os.WriteFile(filepath.Join(data, "hello.txt"), []byte("hello-data\n"), 0o644)
	dir := t.TempDir()
	upCtx, stop := context.WithCancel(ctx)
	defer stop()
	var stdout, stderr lockedBuf
	done := make(chan int, 1)
	go func() {
		done <- RunUp(upCtx, []string{"--name", "uptest", "--dir", dir, "--init", filepath.Join(bin, "imageinit"),
			"--agent", filepath.Join(bin, "guest-agent"), "--data-from", data, "--data-size", "32", "--isolated-net"}, &stdout, &stderr)
	}()
	addr := waitAgentLine(t, &stdout, &stderr, done)
	c, err := agentclient.New(addr, agentclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := "cat-data"
	if _, err := c.Start(ctx, &agentv1.StartRequest{Id: id, Command: "echo written-in-guest > /data/new.txt; cat /data/hello.txt; hostname; grep ' /data ' /proc/mounts | cut -d' ' -f3; " +
		"ip -o -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep ^default | cut -d' ' -f1-3"}); err != nil {
		t.Fatal(err)
	}
	var o, e bytes.Buffer
	st, _, err := c.CopyOutput(ctx, id, agentclient.Offsets{}, true, &o, &e)
	if err != nil || st.ExitCode != 0 || o.String() != "hello-data\nuptest\next4\ninet 10.0.2.15/24\ndefault via 10.0.2.2\n" {
		t.Fatalf("exec: %q %q %v %v\nconsole:\n%s", o.String(), e.String(), st, err, stderr.String())
	}
	// A process that ignores SIGTERM and keeps /data busy: imageinit must
	// SIGKILL it and still leave the disk clean.
	if _, err := c.Start(ctx, &agentv1.StartRequest{Id: "stubborn", Command: "trap '' TERM; cd /data; while :; do sleep 1; done"}); err != nil {
		t.Fatal(err)
	}
	stop()
	select {
	case rc := <-done:
		if rc != 0 || !strings.Contains(stderr.String(), "powered off") {
			t.Fatalf("RunUp: %d\nstdout:%s\nstderr:%s", rc, stdout.String(), stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("RunUp did not return after cancel")
	}
	// imageinit synced and unmounted /data before powering off: the
	// filesystem is clean and holds what the guest wrote.
	img := filepath.Join(dir, "data.ext4")
	if out, err := exec.Command("dumpe2fs", "-h", img).CombinedOutput(); err != nil || !regexp.MustCompile(`Filesystem state:\s+clean\n`).Match(out) {
		t.Errorf("data disk after power-off: %v\n%s", err, out)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /new.txt", img).Output(); err != nil || string(out) != "written-in-guest\n" {
		t.Errorf("file written in the guest: %q %v", out, err)
	}
}

// waitAgentLine waits for RunUp's "agent: ADDR" line.
func waitAgentLine(t *testing.T, stdout, stderr *lockedBuf, done <-chan int) string {
	t.Helper()
	for {
		select {
		case rc := <-done:
			t.Fatalf("RunUp returned %d early\nstdout:%s\nstderr:%s", rc, stdout.String(), stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		for _, l := range strings.Split(stdout.String(), "\n") {
			if a, ok := strings.CutPrefix(l, "agent: "); ok {
				return a
			}
		}
	}
}

// TestRunUpREPL is `vm up --repl` with a script on stdin: the REPL runs it
// against the VM's agent and the VM powers off at the end of input.
func TestRunUpREPL(t *testing.T) {
	needVM(t)
	testKernel(t)
	bin := guestBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr lockedBuf
	rc := RunUpIO(ctx, []string{"--name", "repltest", "--dir", t.TempDir(), "--init", filepath.Join(bin, "imageinit"),
		"--agent", filepath.Join(bin, "guest-agent"), "--repl", "true"}, strings.NewReader("exec uname -m\nexec hostname\n"), &stdout, &stderr)
	if rc != 0 || stdout.String() != "aarch64\nrepltest\n" || !strings.Contains(stderr.String(), "powered off") {
		t.Fatalf("rc %d\nstdout: %q\nstderr: %s", rc, stdout.String(), stderr.String())
	}
}
