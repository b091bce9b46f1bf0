package listener

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
	"google.golang.org/grpc/codes"
)

// TestWaitRealSSHD waits for a real OpenSSH sshd (Debian openssh-server) on
// a high loopback port, with a throwaway host key. sshd needs root for its
// privilege separation.
func TestWaitRealSSHD(t *testing.T) {
	testcap.Root(t)
	const sshd = "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		testcap.Missing(t, "needs "+sshd+" (Debian openssh-server)")
	}
	keygen := testcap.Command(t, "ssh-keygen")
	// sshd insists on its privilege separation directory (Debian makes it
	// at boot through tmpfiles.d, which containers skip).
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatalf("make /run/sshd: %v", err)
	}

	dir := t.TempDir()
	key := filepath.Join(dir, "host_ed25519")
	if out, err := exec.Command(keygen, "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	port := freePort(t, "127.0.0.1")
	conf := filepath.Join(dir, "sshd_config")
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile none
`, port, key)
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(sshd, "-D", "-e", "-f", conf)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("sshd log:\n%s", logs.String())
		}
	})

	r, err := Wait(context.Background(), Request{Port: port, Protocol: SSH, Timeout: 20 * time.Second})
	if err != nil {
		select {
		case <-exited:
			t.Fatalf("sshd exited (%v): %s", cmd.ProcessState, logs.String())
		default:
		}
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.Banner, "SSH-2.0-OpenSSH_") {
		t.Errorf("banner %q, want SSH-2.0-OpenSSH_...", r.Banner)
	}
	if r.BindAddress.String() != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Errorf("bind address %v", r.BindAddress)
	}
	t.Logf("sshd ready after %v: %q", r.Elapsed, r.Banner)

	if _, err := Wait(context.Background(), Request{Port: port, Protocol: TCP, Timeout: 5 * time.Second}); err != nil {
		t.Errorf("tcp: %v", err)
	}
	// sshd answers an HTTP request with its banner: listening, but not HTTP.
	_, err = Wait(context.Background(), Request{Port: port, Protocol: HTTP, Timeout: 300 * time.Millisecond})
	wantCode(t, err, codes.DeadlineExceeded, `response not HTTP: got "SSH-2.0-OpenSSH_`)
}
