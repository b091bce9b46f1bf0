package service_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/guest-agent/service"
	"github.com/sailbox/sailbox/internal/agenttest"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

func TestResumeRequestFromProto(t *testing.T) {
	now := time.Now()
	r, err := service.ResumeRequestFromProto(&agentv1.ResumeRequest{
		HostTimeUnixNano: now.UnixNano(), Entropy: make([]byte, 64), Generation: 4,
		Identity: &agentv1.SandboxIdentity{Hostname: "fork", SandboxId: "sb", Interfaces: []*agentv1.NetworkInterface{
			{Name: "eth0", Mac: "02:00:00:00:00:09", Addresses: []string{"10.0.0.9/24", "fd00::9/64"}, Gateways: []string{"10.0.0.1"}},
			{Name: "eth1", ReplaceAddresses: true},
			{Name: "eth2"},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !r.HostTime.Equal(now) || r.Generation != 4 || r.Identity.Hostname != "fork" || len(r.Identity.Interfaces) != 3 {
		t.Fatalf("request %+v", r)
	}
	i0, i1, i2 := r.Identity.Interfaces[0], r.Identity.Interfaces[1], r.Identity.Interfaces[2]
	if i0.MAC.String() != "02:00:00:00:00:09" || len(i0.Addresses) != 2 || i0.Gateways[0].String() != "10.0.0.1" {
		t.Fatalf("eth0 %+v", i0)
	}
	// replace_addresses with none removes them all; neither keeps them.
	if i1.Addresses == nil || len(i1.Addresses) != 0 || i2.Addresses != nil {
		t.Fatalf("eth1 %#v eth2 %#v", i1.Addresses, i2.Addresses)
	}
	for field, ni := range map[string]*agentv1.NetworkInterface{
		"mac":     {Name: "eth0", Mac: "zz"},
		"address": {Name: "eth0", Addresses: []string{"10.0.0.9"}},
		"gateway": {Name: "eth0", Gateways: []string{"10.0.0.1/24"}},
	} {
		_, err := service.ResumeRequestFromProto(&agentv1.ResumeRequest{Identity: &agentv1.SandboxIdentity{Interfaces: []*agentv1.NetworkInterface{ni}}})
		wantStatus(t, err, codes.InvalidArgument, "eth0: "+field)
	}
}

// TestSnapshotRPCThroughAgent freezes a loop-mounted filesystem through a
// real agent restricted (--freeze-root) to the test's own directory.
func TestSnapshotRPCThroughAgent(t *testing.T) {
	testcap.Root(t)
	testcap.Command(t, "mkfs.ext4")
	dir := t.TempDir()
	mnt := filepath.Join(dir, "data")
	img := filepath.Join(dir, "data.img")
	os.Mkdir(mnt, 0o755)
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(32 << 20)
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			for unix.IoctlSetInt(fd, 0xC0045878 /* FITHAW */, 0) == nil {
			}
			unix.Close(fd)
		}
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
			exec.Command("umount", "-l", mnt).Run()
		}
	})

	// A hook runs under the agent's global reaper (the Starter path).
	hooks := filepath.Join(t.TempDir(), "hooks")
	os.Mkdir(hooks, 0o755)
	hookLog := filepath.Join(t.TempDir(), "hook.log")
	os.WriteFile(filepath.Join(hooks, "10-log"), []byte("#!/bin/sh\necho \"$1\" >> "+hookLog+"\n"), 0o755)
	a := agenttest.Start(t, "--freeze-root", dir, "--freeze-hooks", hooks)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc, err := transport.Dial(ctx, a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(nc)
	defer tc.Close()
	cl := agentv1.NewSnapshotClient(tc)

	fr, err := cl.Freeze(ctx, &agentv1.FreezeRequest{WatchdogMs: 30000})
	if err != nil {
		t.Fatal(err)
	}
	if len(fr.Frozen) != 1 || fr.Frozen[0] != mnt || fr.SinceUnixNano == 0 || fr.WatchdogDeadlineUnixNano <= fr.SinceUnixNano || len(fr.Hooks) != 1 {
		t.Fatalf("freeze %v", fr)
	}
	// The agent keeps answering while frozen.
	st, err := cl.FreezeStatus(ctx, &agentv1.FreezeStatusRequest{})
	if err != nil || !st.Frozen || st.SinceUnixNano != fr.SinceUnixNano || len(st.Mounts) != 1 {
		t.Fatalf("status %v, %v", st, err)
	}
	again, err := cl.Freeze(ctx, &agentv1.FreezeRequest{})
	if err != nil || !again.AlreadyFrozen {
		t.Fatalf("second freeze %v, %v", again, err)
	}
	_, err = cl.Freeze(ctx, &agentv1.FreezeRequest{WatchdogMs: -1})
	wantStatus(t, err, codes.InvalidArgument, "watchdog_ms")

	th, err := cl.Thaw(ctx, &agentv1.ThawRequest{})
	if err != nil || !th.WasFrozen || len(th.Thawed) != 1 || th.Thawed[0] != mnt {
		t.Fatalf("thaw %v, %v", th, err)
	}
	if b, _ := os.ReadFile(hookLog); string(b) != "freeze\nthaw\n" || len(th.Hooks) != 1 {
		t.Fatalf("hook log %q, thaw hooks %v", b, th.Hooks)
	}
	if err := os.WriteFile(filepath.Join(mnt, "after"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err = cl.FreezeStatus(ctx, &agentv1.FreezeStatusRequest{})
	if err != nil || st.Frozen || st.LastThaw != "request" {
		t.Fatalf("status after thaw %v, %v", st, err)
	}
	// Only invalid resumes here: a valid one would touch this machine's
	// clock decision; the resume package tests it in namespaces.
	_, err = cl.Resume(ctx, &agentv1.ResumeRequest{HostTimeUnixNano: time.Now().UnixNano(), Entropy: make([]byte, 10), Generation: 1})
	wantStatus(t, err, codes.InvalidArgument, "entropy")
}
