package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
)

// fileBytes is item 5's file size.
const fileBytes = 256 << 20

// BenchmarkFileVsSSH is item 5's peer comparison: a 256 MiB file written
// into and read out of the "sandbox" through the agent (client library
// WriteFile / ReadFile) and through OpenSSH on loopback, alternating. The
// ssh side runs over a ControlMaster connection, so its handshake is not
// counted, and its write ends with `sync FILE`, as the agent fsyncs what it
// writes. agent-MB/s and ssh-MB/s are the best of the iterations; x-ssh is
// their ratio (target ≥ 3).
//
//	go test -run '^$' -bench FileVsSSH -benchtime 2x ./test/bench
func BenchmarkFileVsSSH(b *testing.B) {
	a := startAgent(b)
	cl := a.Client(b)
	s := startSSHD(b)
	ctl := filepath.Join(s.dir, "ctl")
	if out, err := exec.Command("ssh", s.args("-M", "-S", ctl, "-o", "ControlPersist=yes", "-f", "-N")...).CombinedOutput(); err != nil {
		b.Fatalf("ssh control master: %v: %s", err, out)
	}
	b.Cleanup(func() { exec.Command("ssh", s.args("-S", ctl, "-O", "exit")...).Run() })
	mux := []string{"-S", ctl}
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, zeroReader{}, fileBytes); err != nil {
		b.Fatal(err)
	}
	f.Close()
	ctx := context.Background()

	agentWrite := func() error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		info, err := cl.WriteFile(ctx, filepath.Join(dir, "via-agent"), in, agentclient.WriteOptions{})
		if err == nil && info.GetSize() != fileBytes {
			err = fmt.Errorf("agent wrote %d bytes", info.GetSize())
		}
		return err
	}
	sshWrite := func() error {
		in, err := os.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		dst := filepath.Join(dir, "via-ssh")
		cmd := exec.Command("ssh", append(s.args(mux...), "cat > "+dst+" && sync "+dst)...)
		cmd.Stdin = in
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("ssh cat >: %v: %s", err, out)
		}
		return nil
	}
	agentRead := func() error {
		_, n, err := cl.ReadFile(ctx, src, io.Discard, agentclient.ReadOptions{})
		if err == nil && n != fileBytes {
			err = fmt.Errorf("agent read %d bytes", n)
		}
		return err
	}
	sshRead := func() error {
		cmd := exec.Command("ssh", append(s.args(mux...), "cat "+src)...)
		var cw countingDiscard
		cmd.Stdout = &cw
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("ssh cat: %v", err)
		}
		if cw.n != fileBytes {
			return fmt.Errorf("ssh read %d bytes", cw.n)
		}
		return nil
	}
	for _, c := range []struct {
		name       string
		agent, ssh func() error
	}{{"write", agentWrite, sshWrite}, {"read", agentRead, sshRead}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(fileBytes)
			d := interleave(b, b.N, c.agent, c.ssh)
			best := func(ds []time.Duration) float64 {
				m := ds[0]
				for _, x := range ds {
					m = min(m, x)
				}
				return fileBytes / m.Seconds() / 1e6
			}
			ag, ss := best(d[0]), best(d[1])
			b.ReportMetric(ag, "agent-MB/s")
			b.ReportMetric(ss, "ssh-MB/s")
			b.ReportMetric(ag/ss, "x-ssh")
		})
	}
}

// zeroReader reads zeros.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
