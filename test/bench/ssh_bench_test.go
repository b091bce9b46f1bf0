package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// sshd is a throwaway OpenSSH server on a loopback port: its own host key,
// one authorized throwaway client key, root login by key only, HOME set to
// an empty dir (so no rc file of this machine's root slows the commands).
type sshd struct {
	dir, key string
	port     int
	cmd      *exec.Cmd
}

func startSSHD(b testing.TB) *sshd {
	b.Helper()
	bin, err := exec.LookPath("/usr/sbin/sshd")
	if err != nil {
		b.Skipf("no sshd (Debian openssh-server): %v", err)
	}
	dir := b.TempDir()
	s := &sshd{dir: dir, key: filepath.Join(dir, "client_key")}
	for _, k := range []string{"host_key", "client_key"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			b.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(s.key + ".pub")
	if err != nil {
		b.Fatal(err)
	}
	must(b, os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600))
	must(b, os.MkdirAll(filepath.Join(dir, "home"), 0o700))
	s.port = freeTCPPort(b)
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %[2]s/host_key
PidFile none
AuthorizedKeysFile %[2]s/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv HOME=%[2]s/home
MaxSessions 100
MaxStartups 100
`, s.port, dir)
	must(b, os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600))
	// sshd wants /run/sshd: give it a private tmpfs /run in its own mount
	// namespace instead of touching the machine's /run.
	s.cmd = exec.Command("unshare", "-m", "--propagation", "private", "--", "sh", "-c",
		`mount -t tmpfs tmpfs /run && mkdir -p /run/sshd && exec "$0" -D -e -f "$1"`, bin, filepath.Join(dir, "sshd_config"))
	logf, err := os.Create(filepath.Join(dir, "sshd.log"))
	if err != nil {
		b.Fatal(err)
	}
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		s.cmd.Wait()
		logf.Close()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", s.port), time.Second)
		if err == nil {
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "SSH-2.0-") {
				break
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			b.Fatalf("sshd did not come up on port %d: %v\n%s", s.port, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// args are the ssh client arguments for root@127.0.0.1 with the throwaway key.
func (s *sshd) args(extra ...string) []string {
	a := []string{"-F", "/dev/null", "-p", fmt.Sprint(s.port), "-i", s.key, "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}
	return append(append(a, extra...), "root@127.0.0.1")
}

func (s *sshd) run(extra []string, command string) error {
	out, err := exec.Command("ssh", append(s.args(extra...), command)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ssh %s: %v: %s", command, err, out)
	}
	return nil
}

// settleTime is the pause before each measurement of BenchmarkExecVsSSH.
const settleTime = 5 * time.Millisecond

// interleaveSettled is interleave with an untimed pause before each call:
// each measurement starts from a quiet machine (sshd and ssh keep tearing a
// session down after the client returned, which would otherwise land on
// whatever is measured next).
func interleaveSettled(b testing.TB, n int, fns ...func() error) [][]time.Duration {
	b.Helper()
	out := make([][]time.Duration, len(fns))
	for range n {
		for i, f := range fns {
			time.Sleep(settleTime)
			start := time.Now()
			if err := f(); err != nil {
				b.Fatal(err)
			}
			out[i] = append(out[i], time.Since(start))
		}
	}
	return out
}

func freeTCPPort(b testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func must(b testing.TB, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkExecVsSSH is item 2: the exec round trip of `true` through the
// agent (the client library, one connection, as the supervisor uses it) and
// through the host-supervisor CLI (a process per command, like ssh), against
// OpenSSH on loopback, interleaved. newconn: ssh opens a connection per
// command; controlmaster: ssh multiplexes over a master connection.
// x-faster is ssh's median over the agent's (target ≥ 10 against
// controlmaster); cli-x-faster the same for the CLI.
//
//	go test -run '^$' -bench ExecVsSSH -benchtime 20x ./test/bench
func BenchmarkExecVsSSH(b *testing.B) {
	a := startAgent(b)
	cl := a.Client(b)
	cli := agenttest.Supervisor(b)
	s := startSSHD(b)
	ctx := context.Background()
	agent := func() error {
		st, err := runExec(ctx, cl, &agentv1.StartRequest{Command: "true"}, io.Discard, io.Discard)
		if err == nil && st.ExitCode != 0 {
			err = fmt.Errorf("exit code %d", st.ExitCode)
		}
		return err
	}
	viaCLI := func() error {
		out, err := exec.Command(cli, "exec", "--agent", a.Addr, "--", "true").CombinedOutput()
		if err != nil {
			return fmt.Errorf("host-supervisor exec: %v: %s", err, out)
		}
		return nil
	}
	for _, c := range []struct {
		name  string
		extra []string
		setup func(b *testing.B) []string
	}{
		{"newconn", nil, nil},
		{"controlmaster", nil, func(b *testing.B) []string {
			ctl := filepath.Join(s.dir, "ctl")
			if out, err := exec.Command("ssh", s.args("-M", "-S", ctl, "-o", "ControlPersist=yes", "-f", "-N")...).CombinedOutput(); err != nil {
				b.Fatalf("ssh control master: %v: %s", err, out)
			}
			b.Cleanup(func() { exec.Command("ssh", s.args("-S", ctl, "-O", "exit")...).Run() })
			return []string{"-S", ctl}
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			extra := c.extra
			if c.setup != nil {
				extra = c.setup(b)
			}
			ssh := func() error { return s.run(extra, "true") }
			interleave(b, 3, agent, viaCLI, ssh) // warm up
			b.ResetTimer()
			d := interleaveSettled(b, b.N, agent, viaCLI, ssh)
			b.StopTimer()
			us := func(x time.Duration) float64 { return float64(x.Nanoseconds()) / 1e3 }
			b.ReportMetric(us(median(d[0])), "agent-us")
			b.ReportMetric(us(median(d[1])), "cli-us")
			b.ReportMetric(us(median(d[2])), "ssh-us")
			b.ReportMetric(float64(median(d[2]))/float64(median(d[0])), "x-faster")
			b.ReportMetric(float64(median(d[2]))/float64(median(d[1])), "cli-x-faster")
		})
	}
}
