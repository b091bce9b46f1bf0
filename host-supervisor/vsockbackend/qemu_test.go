package vsockbackend

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
)

// syncBuffer is a log sink shared by the back end's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// qmp runs one QMP command on a fresh session.
func qmp(path, cmd string) (map[string]any, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	dec := json.NewDecoder(c)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return nil, err
	}
	for _, m := range []string{`{"execute":"qmp_capabilities"}`, fmt.Sprintf(`{"execute":%q}`, cmd)} {
		if _, err := c.Write([]byte(m)); err != nil {
			return nil, err
		}
		for {
			var r map[string]any
			if err := dec.Decode(&r); err != nil {
				return nil, err
			}
			if _, ev := r["event"]; ev {
				continue
			}
			if e, bad := r["error"]; bad {
				return nil, fmt.Errorf("qmp %s: %v", cmd, e)
			}
			if m != `{"execute":"qmp_capabilities"}` {
				return r, nil
			}
			break
		}
	}
	return nil, nil
}

// Real QEMU (paused, nothing booted) connects to the back end and
// negotiates at device realize: features, protocol features with CONFIG,
// SET_OWNER, the vring call fds, and GET_CONFIG for the guest CID.
func TestQEMUHandshake(t *testing.T) {
	qemu := testcap.Command(t, "qemu-system-aarch64")
	for _, dev := range []string{"vhost-user-vsock-pci", "vhost-user-vsock-device"} {
		t.Run(dev, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "vsq")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			var logs syncBuffer
			cfg := Config{GuestCID: 42, VhostUserSocket: filepath.Join(dir, "vu.sock"), HybridSocket: filepath.Join(dir, "vm.vsock"),
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
			b, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			served := make(chan error, 1)
			go func() { served <- b.Serve(ctx) }()

			qmpSock := filepath.Join(dir, "qmp.sock")
			var stderr syncBuffer
			cmd := exec.Command(qemu, "-M", "virt,memory-backend=mem", "-cpu", "cortex-a72", "-m", "256M", "-accel", "tcg",
				"-object", "memory-backend-memfd,id=mem,size=256M,share=on",
				"-chardev", "socket,id=vvsock,path="+cfg.VhostUserSocket,
				"-device", dev+",chardev=vvsock",
				"-S", "-display", "none", "-monitor", "none", "-serial", "none", "-nodefaults",
				"-qmp", "unix:"+qmpSock+",server=on,wait=off")
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-exited
			})

			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(logs.String(), "request=GET_CONFIG") {
				select {
				case err := <-exited:
					t.Fatalf("qemu exited: %v\n%s", err, stderr.String())
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("no GET_CONFIG from QEMU within 20s; backend log:\n%s\nqemu:\n%s", logs.String(), stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			var st map[string]any
			for {
				if st, err = qmp(qmpSock, "query-status"); err == nil || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("QMP query-status: %v\n%s", err, stderr.String())
			}
			t.Logf("QEMU status: %v", st["return"])
			log := logs.String()
			if testing.Verbose() {
				t.Logf("back end log:\n%s", log)
			}
			for _, req := range []string{"GET_FEATURES", "GET_PROTOCOL_FEATURES", "SET_PROTOCOL_FEATURES", "SET_OWNER", "SET_VRING_CALL", "GET_CONFIG"} {
				if !strings.Contains(log, "request="+req+" ") {
					t.Errorf("QEMU did not send %s", req)
				}
			}
			if strings.Contains(log, "vhost-user request failed") {
				t.Errorf("a request failed:\n%s", log)
			}
			if s := stderr.String(); strings.Contains(s, "vhost") {
				t.Errorf("qemu complained: %s", s)
			}
			// Quit (PCI) or a SIGKILL (MMIO): either way the back end sees
			// the front end go away, which is not an error.
			if dev == "vhost-user-vsock-pci" {
				qmp(qmpSock, "quit")
			} else {
				cmd.Process.Kill()
			}
			select {
			case err := <-served:
				if err != nil {
					t.Fatalf("Serve after QEMU quit: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Serve did not return after QEMU quit")
			}
		})
	}
}
