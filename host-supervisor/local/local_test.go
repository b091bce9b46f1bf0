package local

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/agenttest"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

func startLocal(t *testing.T, o Options) (*Sandbox, string) {
	t.Helper()
	var notes bytes.Buffer
	o.Notices = &notes
	if o.Dir == "" {
		o.Dir = "/" // the private /tmp is skipped when the working directory is in /tmp (a clone may be)
	}
	if o.AgentBin == "" {
		o.AgentBin = filepath.Join(agenttest.Binaries(t), "guest-agent")
	}
	sb, err := Start(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Close() })
	return sb, notes.String()
}

func run(t *testing.T, addr, cmd string) string {
	t.Helper()
	cl, err := agentclient.New(addr, agentclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out, errb bytes.Buffer
	ctx := context.Background()
	resp, err := cl.Start(ctx, &agentv1.StartRequest{Command: cmd})
	if err != nil {
		t.Fatal(err)
	}
	st, _, err := cl.CopyOutput(ctx, resp.Status.Id, agentclient.Offsets{}, true, &out, &errb)
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("%s: %v %v: %s", cmd, st, err, errb.String())
	}
	return out.String()
}

func gone(pid int) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func TestIsolatedAsRoot(t *testing.T) {
	testcap.Root(t)
	sb, notes := startLocal(t, Options{})
	if !sb.Isolated || !sb.PrivateTmp || !strings.Contains(notes, "isolated in new mount, PID, UTS and IPC namespaces") {
		t.Fatalf("isolated=%v privateTmp=%v notes %q", sb.Isolated, sb.PrivateTmp, notes)
	}
	if got := run(t, sb.Addr, "echo $PPID; hostname; ls -A /tmp | wc -l; readlink /proc/1/exe >/dev/null && echo proc-ok"); got != "1\nsailbox-local\n0\nproc-ok\n" {
		t.Errorf("inside: %q (want parent pid 1, hostname, an empty private /tmp, its own /proc)", got)
	}
	// Host mounts are not touched: the host's /tmp still has its content.
	if _, err := os.Stat(os.TempDir()); err != nil {
		t.Fatal(err)
	}
	// The agent is started with a confined freeze root and hooks dir.
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(sb.Pid()) + "/cmdline")
	args := strings.Split(string(cmdline), "\x00")
	if !contains(args, "--freeze-root", sb.FreezeRoot) || !contains(args, "--freeze-hooks", filepath.Join(sb.Dir, "freeze-hooks.d")) {
		t.Errorf("agent args %q lack the confined freeze root/hooks", args)
	}
	dir, pid := sb.Dir, sb.Pid()
	sb.Close()
	if !gone(pid) {
		t.Errorf("agent %d alive after Close", pid)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("private dir %s left behind: %v", dir, err)
	}
}

func TestPlainKeepsStateDir(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	sb, notes := startLocal(t, Options{Plain: true, StateDir: state})
	if sb.Isolated || !strings.Contains(notes, "note: not isolated") {
		t.Fatalf("isolated=%v notes %q", sb.Isolated, notes)
	}
	if got := run(t, sb.Addr, "echo plain"); got != "plain\n" {
		t.Errorf("got %q", got)
	}
	// A background process group of the agent dies with it.
	cl, _ := agentclient.New(sb.Addr, agentclient.Options{})
	defer cl.Close()
	resp, err := cl.Start(context.Background(), &agentv1.StartRequest{Id: "bg", Command: "sleep 1003"})
	if err != nil {
		t.Fatal(err)
	}
	sb.Close()
	if !gone(int(resp.Status.Pid)) {
		t.Errorf("exec pid %d alive after Close", resp.Status.Pid)
	}
	if _, err := os.Stat(filepath.Join(state, "agent.log")); err != nil {
		t.Errorf("state dir not kept: %v", err)
	}
}

func TestMissingAgentBinary(t *testing.T) {
	_, err := Start(context.Background(), Options{AgentBin: "/nonexistent/guest-agent"})
	if err == nil || !strings.Contains(err.Error(), "--agent-bin") {
		t.Errorf("err %v", err)
	}
	// An agent that exits at once: the error carries its log.
	bad := filepath.Join(t.TempDir(), "guest-agent")
	os.WriteFile(bad, []byte("#!/bin/sh\necho broken agent >&2\nexit 3\n"), 0o755)
	_, err = Start(context.Background(), Options{AgentBin: bad, Plain: true})
	if err == nil || !strings.Contains(err.Error(), "broken agent") {
		t.Errorf("err %v", err)
	}
}

func contains(args []string, flag, val string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == val {
			return true
		}
	}
	return false
}

// A working directory under /tmp keeps the host's /tmp (a private one would
// hide it); commands start there.
func TestWorkingDirUnderTmp(t *testing.T) {
	testcap.Root(t)
	dir, err := os.MkdirTemp("/tmp", "sailbox-local-cwd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sb, notes := startLocal(t, Options{Dir: dir})
	if !sb.Isolated || sb.PrivateTmp || !strings.Contains(notes, "shares the host's /tmp") {
		t.Fatalf("isolated=%v privateTmp=%v notes %q", sb.Isolated, sb.PrivateTmp, notes)
	}
	if got := run(t, sb.Addr, "pwd; cd \"$PWD\" && echo cd-ok"); got != dir+"\ncd-ok\n" {
		t.Errorf("got %q, want the working dir %s", got, dir)
	}
}

// A directory a killed session left behind is swept by the next start; a
// live session's and a fresh one are not.
func TestSweepsStaleDirs(t *testing.T) {
	testcap.Root(t)
	mk := func(age time.Duration, live bool) string {
		d, err := os.MkdirTemp("/run/sailbox", dirPrefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		os.WriteFile(filepath.Join(d, "agent.log"), nil, 0o600)
		ln, err := net.Listen("unix", filepath.Join(d, "agent.sock"))
		if err != nil {
			t.Fatal(err)
		}
		if live {
			t.Cleanup(func() { ln.Close() })
		} else {
			ln.(*net.UnixListener).SetUnlinkOnClose(false)
			ln.Close()
		}
		old := time.Now().Add(-age)
		os.Chtimes(d, old, old)
		return d
	}
	os.MkdirAll("/run/sailbox", 0o700)
	stale, fresh, live := mk(time.Hour, false), mk(0, false), mk(time.Hour, true)
	startLocal(t, Options{})
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale dir %s not swept (%v)", stale, err)
	}
	for _, d := range []string{fresh, live} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s swept: %v", d, err)
		}
	}
}

// BenchmarkStartClose: a local sandbox from nothing to an answering agent,
// and its teardown; isolated (namespaces, re-exec, mounts) against plain.
func BenchmarkStartClose(b *testing.B) {
	for _, plain := range []bool{true, false} {
		name := "plain"
		if !plain {
			name = "isolated"
			if os.Geteuid() != 0 {
				continue
			}
		}
		b.Run(name, func(b *testing.B) {
			bin := filepath.Join(agenttest.Binaries(b), "guest-agent")
			for b.Loop() {
				sb, err := Start(context.Background(), Options{AgentBin: bin, Plain: plain, Dir: "/"})
				if err != nil {
					b.Fatal(err)
				}
				sb.Close()
			}
		})
	}
}
