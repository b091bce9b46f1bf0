package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/agenttest"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// cliCtx is cli with a deadline: a command that hangs (a FIFO read that
// blocks) fails the test instead of hanging it.
func cliCtx(t *testing.T, d time.Duration, stdin io.Reader, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, agenttest.Supervisor(t), args...)
	cmd.Env = agenttest.Env()
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("host-supervisor %v hung (killed after %v)", args, d)
	}
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run host-supervisor %v: %v", args, err)
	}
	return r
}

func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.Contains(fi.Name(), ".sailbox-tmp-") {
			t.Errorf("temp file left behind: %s", p)
		}
		return nil
	})
}

func TestWriteReadStatAcceptance(t *testing.T) {
	a := agenttest.Start(t)
	dir := t.TempDir()
	f := filepath.Join(dir, "t", "a", "b", "f")
	// printf 'x%.0s' {1..10} | host-supervisor write --agent A --mode 0600 PATH
	r := cli(t, strings.NewReader(strings.Repeat("x", 10)), "write", "--agent", a.Addr, "--mode", "0600", f)
	if r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("write: %+v", r)
	}
	fi, err := os.Stat(f)
	if err != nil || fi.Mode() != 0o600 || fi.Size() != 10 {
		t.Fatalf("file: %v %v", fi.Mode(), err)
	}
	for _, d := range []string{"t", "t/a", "t/a/b"} {
		if fi, err := os.Stat(filepath.Join(dir, d)); err != nil || fi.Mode() != os.ModeDir|0o755 {
			t.Errorf("parent %s: %v %v", d, fi.Mode(), err)
		}
	}
	if r := cli(t, nil, "read", "--agent", a.Addr, f); r.code != 0 || r.stdout != "xxxxxxxxxx" {
		t.Fatalf("read: %+v", r)
	}
	if r := cli(t, nil, "read", "--agent", a.Addr, "--offset", "3", "--limit", "4", f); r.code != 0 || r.stdout != "xxxx" {
		t.Fatalf("read range: %+v", r)
	}
	r = cli(t, nil, "stat", "--agent", a.Addr, f)
	if r.code != 0 || !strings.Contains(r.stdout, "type: regular\nsize: 10\nmode: 0600\n") {
		t.Fatalf("stat: %+v", r)
	}
	os.Symlink("t/a/b/f", filepath.Join(dir, "link"))
	r = cli(t, nil, "stat", "--agent", a.Addr, filepath.Join(dir, "link"))
	if r.code != 0 || !strings.Contains(r.stdout, "type: symlink\n") || !strings.Contains(r.stdout, "symlink_target: t/a/b/f\n") {
		t.Fatalf("stat link: %+v", r)
	}
	if r := cli(t, nil, "read", "--agent", a.Addr, filepath.Join(dir, "link")); r.stdout != "xxxxxxxxxx" {
		t.Fatalf("read through link: %+v", r)
	}

	// Replace, with owner and setuid: chown happens before chmod, so the bit stays.
	r = cli(t, strings.NewReader("new"), "write", "--agent", a.Addr, "--mode", "4750", "--uid", "1234", "--gid", "5678", f)
	if r.code != 0 {
		t.Fatalf("write with owner: %+v", r)
	}
	var st syscall.Stat_t
	syscall.Stat(f, &st)
	if st.Mode&0o7777 != 0o4750 || st.Uid != 1234 || st.Gid != 5678 || st.Size != 3 {
		t.Fatalf("mode %#o uid %d gid %d size %d", st.Mode&0o7777, st.Uid, st.Gid, st.Size)
	}
	// Parents created for an owned file belong to the same owner.
	owned := filepath.Join(dir, "o1", "o2", "f")
	if r := cli(t, strings.NewReader("o"), "write", "--agent", a.Addr, "--uid", "1234", "--gid", "5678", owned); r.code != 0 {
		t.Fatalf("owned write: %+v", r)
	}
	for _, p := range []string{filepath.Join(dir, "o1"), filepath.Join(dir, "o1", "o2"), owned} {
		syscall.Stat(p, &st)
		if st.Uid != 1234 || st.Gid != 5678 {
			t.Errorf("%s: owner %d:%d, want 1234:5678", p, st.Uid, st.Gid)
		}
	}
	// Empty content, default mode.
	empty := filepath.Join(dir, "empty")
	if r := cli(t, strings.NewReader(""), "write", "--agent", a.Addr, empty); r.code != 0 {
		t.Fatalf("empty write: %+v", r)
	}
	if fi, err := os.Stat(empty); err != nil || fi.Size() != 0 || fi.Mode() != 0o644 {
		t.Fatalf("empty: %v %v", fi, err)
	}
	if r := cli(t, nil, "read", "--agent", a.Addr, empty); r.code != 0 || r.stdout != "" {
		t.Fatalf("read empty: %+v", r)
	}
	noTempFiles(t, dir)
}

func TestReadOfNonRegularFilesFailsFast(t *testing.T) {
	a := agenttest.Start(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for path, kind := range map[string]string{"/dev/zero": "character device", "/tmp": "directory", fifo: "FIFO"} {
		r := cliCtx(t, 20*time.Second, nil, "read", "--agent", a.Addr, path)
		want := fmt.Sprintf("error: FailedPrecondition: %s is a %s, not a regular file\n", path, kind)
		if r.code != 125 || r.stderr != want || r.stdout != "" {
			t.Errorf("read %s: exit %d stderr %q; want 125 %q", path, r.code, r.stderr, want)
		}
	}
	// The agent still serves.
	if r := cli(t, nil, "stat", "--agent", a.Addr, fifo); r.code != 0 || !strings.Contains(r.stdout, "type: fifo") {
		t.Fatalf("stat fifo: %+v", r)
	}
}

func TestFileErrors(t *testing.T) {
	a := agenttest.Start(t)
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	os.WriteFile(reg, []byte("r"), 0o644)
	cases := []struct {
		stdin string
		args  []string
		want  string
	}{
		{"x", []string{"write", "rel/path"}, "error: InvalidArgument: path \"rel/path\" is not absolute"},
		{"x", []string{"write", ""}, "error: InvalidArgument: empty path"},
		{"x", []string{"write", reg + "/f"}, "error: FailedPrecondition: write " + reg + "/f: parent " + reg + " is a regular file, not a directory"},
		{"x", []string{"write", "--no-parents", dir + "/nope/f"}, "error: FailedPrecondition: write " + dir + "/nope/f: parent directory " + dir + "/nope does not exist"},
		{"x", []string{"write", dir}, "error: FailedPrecondition: write " + dir + ": is a directory"},
		{"x", []string{"write", "--mode", "9", dir + "/m"}, "error: InvalidArgument: write: invalid value \"9\" for flag -mode"},
		{"x", []string{"write", "--mode", "17777", dir + "/m"}, "error: InvalidArgument: write: --mode 17777"},
		{"", []string{"read", dir + "/missing"}, "error: NotFound: read " + dir + "/missing: no such file or directory"},
		{"", []string{"read", "relative"}, "error: InvalidArgument: path \"relative\" is not absolute"},
		{"", []string{"stat", dir + "/missing"}, "error: NotFound: stat " + dir + "/missing"},
		{"", []string{"read", "a", "b"}, "error: InvalidArgument: read: want exactly one PATH"},
	}
	for _, c := range cases {
		args := append([]string{c.args[0], "--agent", a.Addr}, c.args[1:]...)
		r := cli(t, strings.NewReader(c.stdin), args...)
		if r.code != 125 || !strings.HasPrefix(r.stderr, c.want) {
			t.Errorf("%q: exit %d stderr %q; want 125 %q", c.args, r.code, r.stderr, c.want)
		}
	}
	if _, err := os.Stat(dir + "/nope"); err == nil {
		t.Error("--no-parents created the parent")
	}
	// A NUL byte cannot pass through argv: use the client.
	cl := a.Client(t)
	_, err := cl.WriteFile(context.Background(), dir+"/a\x00b", strings.NewReader("x"), agentclient.WriteOptions{})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("NUL path: %v", err)
	}
	noTempFiles(t, dir)
}

// TestInterruptedWriteKeepsOldFile kills the CLI in the middle of a
// transfer: the old file stays as it was and no temp file is left behind.
func TestInterruptedWriteKeepsOldFile(t *testing.T) {
	a := agenttest.Start(t)
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("old content"), 0o644)
	tempSize := func(dir string) int64 { return agentTempSize(a.Cmd.Process.Pid, dir) }
	deadline := time.Now().Add(20 * time.Second)

	// startWrite starts a CLI write, feeds it 5 MiB and waits until the
	// agent's temp file holds most of it.
	startWrite := func() *exec.Cmd {
		cmd := exec.Command(agenttest.Supervisor(t), "write", "--agent", a.Addr, f)
		cmd.Env = agenttest.Env()
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		in.Write(bytes.Repeat([]byte("n"), 5<<20))
		for tempSize(dir) < 4<<20 {
			if time.Now().After(deadline) {
				t.Fatalf("the transfer never reached the agent (temp size %d)", tempSize(dir))
			}
			time.Sleep(10 * time.Millisecond)
		}
		return cmd
	}

	// The agent dies mid-transfer (SIGKILL, as the OOM killer would): the
	// unnamed temp file dies with it.
	startWrite()
	a.KillHard()
	if b, _ := os.ReadFile(f); string(b) != "old content" {
		t.Fatalf("old file changed: %q", b)
	}
	noTempFiles(t, dir)
	a.Restart(t)

	// The client vanishes mid-transfer.
	cmd := startWrite()
	cmd.Process.Kill()
	cmd.Wait()
	for tempSize(dir) >= 0 {
		if time.Now().After(deadline) {
			t.Fatal("temp file still there after the client vanished")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b, _ := os.ReadFile(f); string(b) != "old content" {
		t.Fatalf("old file changed: %q", b)
	}

	// A client that ends the stream without a commit: same.
	nc, err := transport.Dial(context.Background(), a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(nc)
	defer tc.Close()
	st, err := agentv1.NewFilesClient(tc).Write(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st.Send(&agentv1.WriteFileRequest{Header: &agentv1.WriteFileHeader{Path: f}, Data: []byte("partial")})
	st.CloseSend()
	for {
		_, err = st.Recv()
		if err != nil {
			break
		}
	}
	if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "without a commit") {
		t.Fatalf("stream without commit: %v", err)
	}
	if b, _ := os.ReadFile(f); string(b) != "old content" || tempSize(dir) >= 0 {
		t.Fatalf("after uncommitted stream: %q, temp %d", b, tempSize(dir))
	}
	// The client's own source fails mid-way: the write is abandoned.
	cl := a.Client(t)
	_, err = cl.WriteFile(context.Background(), f, io.MultiReader(bytes.NewReader(make([]byte, 3<<20)), errReader{}), agentclient.WriteOptions{})
	if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "reading the data: disk on fire") {
		t.Fatalf("failing source: %v", err)
	}
	for tempSize(dir) >= 0 {
		if time.Now().After(deadline) {
			t.Fatal("temp file still there after the source failed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b, _ := os.ReadFile(f); string(b) != "old content" {
		t.Fatalf("old file changed: %q", b)
	}
	// Misuse of the protocol: no header, oversized chunk.
	for _, msgs := range [][]*agentv1.WriteFileRequest{
		{{Data: []byte("no header")}},
		{{Header: &agentv1.WriteFileHeader{Path: f}}, {Data: make([]byte, 1<<20+1)}},
	} {
		st, err := agentv1.NewFilesClient(tc).Write(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			st.Send(m)
		}
		st.CloseSend()
		for err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("bad stream: %v", err)
		}
	}
	noTempFiles(t, dir)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

// agentTempSize is the size of the temp file the agent has open in dir
// (named, or unnamed from O_TMPFILE), or -1 when it has none.
func agentTempSize(pid int, dir string) int64 {
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(fdDir)
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil || !strings.HasPrefix(target, dir+"/") {
			continue
		}
		if strings.Contains(target, ".sailbox-tmp-") || strings.HasSuffix(target, " (deleted)") {
			if fi, err := os.Stat(filepath.Join(fdDir, e.Name())); err == nil {
				return fi.Size()
			}
			return 0
		}
	}
	return -1
}

func TestWriteLargerThanFreeSpace(t *testing.T) {
	testcap.Root(t)
	a := agenttest.Start(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	f := filepath.Join(dir, "big")
	os.WriteFile(f, []byte("old"), 0o644)
	r := cli(t, bytes.NewReader(make([]byte, 16<<20)), "write", "--agent", a.Addr, f)
	if r.code != 125 || !strings.HasPrefix(r.stderr, "error: ResourceExhausted: write "+f+": no space left on device") {
		t.Fatalf("write 16 MiB to a 4 MiB tmpfs: %+v", r)
	}
	if b, _ := os.ReadFile(f); string(b) != "old" {
		t.Fatalf("old file: %q", b)
	}
	noTempFiles(t, dir)
	// The space is back and the agent keeps serving.
	if r := cli(t, bytes.NewReader(make([]byte, 2<<20)), "write", "--agent", a.Addr, f); r.code != 0 {
		t.Fatalf("write after ENOSPC: %+v", r)
	}
}

// TestWriteToFrozenFilesystem: a write to a filesystem frozen for a
// snapshot fails at once instead of blocking until the thaw.
func TestWriteToFrozenFilesystem(t *testing.T) {
	testcap.Root(t)
	testcap.Command(t, "mkfs.ext4")
	dir := t.TempDir()
	mnt, img := filepath.Join(dir, "data"), filepath.Join(dir, "data.img")
	os.Mkdir(mnt, 0o755)
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 32<<20)
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
	a := agenttest.Start(t, "--freeze-root", dir, "--freeze-hooks", filepath.Join(dir, "no-hooks"))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc, err := transport.Dial(ctx, a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := ttrpc.NewClient(nc)
	defer tc.Close()
	snap := agentv1.NewSnapshotClient(tc)
	if _, err := snap.Freeze(ctx, &agentv1.FreezeRequest{WatchdogMs: 30000}); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(mnt, "sub", "f")
	r := cliCtx(t, 20*time.Second, strings.NewReader("x"), "write", "--agent", a.Addr, f)
	if r.code != 125 || !strings.HasPrefix(r.stderr, "error: FailedPrecondition: "+f+": filesystem "+mnt+" is frozen since") {
		t.Fatalf("write while frozen: %+v", r)
	}
	// Reads keep working while frozen.
	if r := cliCtx(t, 20*time.Second, nil, "stat", "--agent", a.Addr, mnt); r.code != 0 {
		t.Fatalf("stat while frozen: %+v", r)
	}
	if _, err := snap.Thaw(ctx, &agentv1.ThawRequest{}); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, strings.NewReader("x"), "write", "--agent", a.Addr, f); r.code != 0 {
		t.Fatalf("write after thaw: %+v", r)
	}
}

// TestPermissionDeniedAsNonRoot runs the agent as uid 65534.
func TestPermissionDeniedAsNonRoot(t *testing.T) {
	testcap.Root(t)
	dir, err := os.MkdirTemp("", "sailbox-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	bin := filepath.Join(dir, "guest-agent")
	b, err := os.ReadFile(filepath.Join(agenttest.Binaries(t), "guest-agent"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, b, 0o755)
	sock := filepath.Join(dir, "agent.sock")
	cmd := exec.Command(bin, "--listen", "unix://"+sock, "--state-dir", filepath.Join(dir, "state"), "--freeze-root", dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, Setpgid: true}
	var logb bytes.Buffer
	cmd.Stderr = &logb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	addr := "unix://" + sock
	cl, err := agentclient.New(addr, agentclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err != nil {
		t.Fatalf("unprivileged agent: %v\n%s", err, logb.String())
	}
	secret := filepath.Join(t.TempDir(), "secret") // t.TempDir is root-only
	os.WriteFile(secret, []byte("s"), 0o600)
	for _, c := range []struct {
		stdin io.Reader
		args  []string
		want  string
	}{
		{nil, []string{"read", "/etc/shadow"}, "error: PermissionDenied: read /etc/shadow: permission denied"},
		{nil, []string{"read", secret}, "error: PermissionDenied: read " + secret},
		{strings.NewReader("x"), []string{"write", "/root/sailbox-test/f"}, "error: PermissionDenied: "},
		{strings.NewReader("x"), []string{"write", "/etc/sailbox-test-f"}, "error: PermissionDenied: write /etc/sailbox-test-f: permission denied"},
		{strings.NewReader("x"), []string{"write", "--uid", "0", dir + "/owned"}, "error: PermissionDenied: chown " + dir + "/owned"},
	} {
		args := append([]string{c.args[0], "--agent", addr}, c.args[1:]...)
		r := cli(t, c.stdin, args...)
		if r.code != 125 || !strings.HasPrefix(r.stderr, c.want) {
			t.Errorf("%q: exit %d stderr %q; want 125 %q", c.args, r.code, r.stderr, c.want)
		}
	}
	noTempFiles(t, dir)
}

// TestReadResumesAcrossDroppedConnections reads through a proxy that cuts
// the link every 3 MiB: the client resumes at its offset.
func TestReadResumesAcrossDroppedConnections(t *testing.T) {
	a := agenttest.Start(t)
	src := filepath.Join(t.TempDir(), "src")
	writeRandom(t, src, 20<<20)
	before := proxyCuts.Load()
	proxy := newCuttingProxy(t, a.Socket, 3<<20)
	cl, err := agentclient.New("unix://"+proxy, agentclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	h := sha256.New()
	info, n, err := cl.ReadFile(ctx, src, h, agentclient.ReadOptions{})
	if err != nil || n != 20<<20 || info.Size != 20<<20 {
		t.Fatalf("read: %v, %d bytes, %+v", err, n, info)
	}
	want, _ := fileSHA(src)
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Fatalf("sha %s, want %s", got, want)
	}
	if cuts := proxyCuts.Load() - before; cuts < 3 {
		t.Fatalf("only %d cuts: resume not exercised", cuts)
	}
}

func writeRandom(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, io.LimitReader(randReader{rand.NewChaCha8([32]byte{byte(size)})}, size)); err != nil {
		t.Fatal(err)
	}
}

type randReader struct{ r *rand.ChaCha8 }

func (r randReader) Read(b []byte) (int, error) { return r.r.Read(b) }

// TestLargeFileRoundTripInBoundedMemory: 256 MiB through write and read
// with the same sha256, while the agent's peak RSS stays under 64 MiB.
func TestLargeFileRoundTripInBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB transfer")
	}
	a := agenttest.Start(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeRandom(t, src, 256<<20)
	want, _ := fileSHA(src)
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dst := filepath.Join(dir, "in", "guest", "dst")
	if r := cliCtx(t, 5*time.Minute, in, "write", "--agent", a.Addr, dst); r.code != 0 || r.stderr != "" { // no progress line: stderr is no terminal
		t.Fatalf("write: %+v", r)
	}
	if got, _ := fileSHA(dst); got != want {
		t.Fatalf("guest copy sha %s, want %s", got, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, agenttest.Supervisor(t), "read", "--agent", a.Addr, dst)
	cmd.Env = agenttest.Env()
	h := sha256.New()
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = h, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("read: %v: %s", err, errb.String())
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Fatalf("read back sha %s, want %s", got, want)
	}
	hwm := vmHWM(t, a.Cmd.Process.Pid)
	t.Logf("agent peak RSS (VmHWM) after 256 MiB write+read: %.1f MiB", float64(hwm)/(1<<20))
	if hwm >= 64<<20 {
		t.Fatalf("agent VmHWM %d KiB, want < 64 MiB", hwm>>10)
	}
	noTempFiles(t, dir)
}

// vmHWM returns a process's peak resident set size in bytes.
func vmHWM(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/pid/status")
	return 0
}

// benchSize is the transfer size of the file benchmarks.
const benchSize = 256 << 20

// repeatReader yields n bytes of a fixed random 1 MiB block, so the
// benchmarks measure the transfer, not the host's disk or RNG.
type repeatReader struct {
	block []byte
	left  int64
	off   int
}

func newRepeatReader(n int64) *repeatReader {
	b := make([]byte, 1<<20)
	randReader{rand.NewChaCha8([32]byte{7})}.Read(b)
	return &repeatReader{block: b, left: n}
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(int64(len(p)), r.left)], r.block[r.off:])
	r.off = (r.off + n) % len(r.block)
	r.left -= int64(n)
	return n, nil
}

// rawServer is the baseline: a plain unix-socket server doing the same
// file work as the agent (write: temp file, fsync, rename; read: copy the
// file to the socket) with no protocol at all.
func rawServer(b *testing.B, dir string) string {
	sock := filepath.Join(b.TempDir(), "raw.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				var op [1]byte
				if _, err := io.ReadFull(c, op[:]); err != nil {
					return
				}
				dst := filepath.Join(dir, "raw")
				if op[0] == 'r' {
					f, err := os.Open(dst)
					if err != nil {
						return
					}
					io.Copy(c, f)
					f.Close()
					return
				}
				f, err := os.CreateTemp(dir, ".raw-tmp-")
				if err != nil {
					return
				}
				io.Copy(f, c)
				f.Sync()
				f.Close()
				os.Rename(f.Name(), dst)
				c.Write([]byte{'k'})
			}(c)
		}
	}()
	return sock
}

func rawWrite(b *testing.B, sock string, src io.Reader) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{'w'})
	if _, err := io.Copy(c, src); err != nil {
		b.Fatal(err)
	}
	c.(*net.UnixConn).CloseWrite()
	var ok [1]byte
	if _, err := io.ReadFull(c, ok[:]); err != nil {
		b.Fatal("raw write not confirmed:", err)
	}
}

func rawRead(b *testing.B, sock string) int64 {
	c, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{'r'})
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func reportRates(b *testing.B, agent, raw time.Duration) {
	mb := float64(benchSize) * float64(b.N) / 1e6
	b.ReportMetric(mb/agent.Seconds(), "agent-MB/s")
	b.ReportMetric(mb/raw.Seconds(), "raw-MB/s")
	b.ReportMetric(raw.Seconds()/agent.Seconds(), "agent/raw")
	b.ReportMetric(0, "ns/op") // the op is two transfers: the metrics above say more
}

// BenchmarkFileWrite256MiB writes 256 MiB through the agent (streamed,
// acknowledged chunks, temp file, fsync, rename) and through a raw unix
// socket doing the same file work, in the same run.
func BenchmarkFileWrite256MiB(b *testing.B) {
	a := agenttest.Start(b)
	cl := a.Client(b)
	dir := b.TempDir()
	sock := rawServer(b, dir)
	ctx := context.Background()
	var agent, raw time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := cl.WriteFile(ctx, filepath.Join(dir, "agent"), newRepeatReader(benchSize), agentclient.WriteOptions{}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		rawWrite(b, sock, newRepeatReader(benchSize))
		raw += time.Since(t1)
		agent += t1.Sub(t0)
	}
	reportRates(b, agent, raw)
}

// BenchmarkFileRead256MiB reads a 256 MiB file through the agent and
// through a raw unix socket (sendfile), in the same run.
func BenchmarkFileRead256MiB(b *testing.B) {
	a := agenttest.Start(b)
	cl := a.Client(b)
	dir := b.TempDir()
	sock := rawServer(b, dir)
	for _, name := range []string{"agent", "raw"} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(f, newRepeatReader(benchSize))
		f.Close()
	}
	ctx := context.Background()
	var agent, raw time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, n, err := cl.ReadFile(ctx, filepath.Join(dir, "agent"), io.Discard, agentclient.ReadOptions{}); err != nil || n != benchSize {
			b.Fatal(n, err)
		}
		t1 := time.Now()
		if n := rawRead(b, sock); n != benchSize {
			b.Fatal("raw read", n)
		}
		raw += time.Since(t1)
		agent += t1.Sub(t0)
	}
	reportRates(b, agent, raw)
}
