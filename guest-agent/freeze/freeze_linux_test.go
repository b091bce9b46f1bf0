package freeze

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// These tests freeze only loop-mounted images inside their own temp dir:
// every Freezer they build selects mounts below that dir and nothing else.

// mountImage creates an ext4 image in dir and loop-mounts it at dir/name.
// Cleanup thaws it directly (whatever the freezer did) and unmounts it.
func mountImage(t testing.TB, dir, name string, readOnly bool) (mnt, img string) {
	t.Helper()
	testcap.Root(t)
	testcap.Command(t, "mkfs.ext4")
	testcap.Command(t, "mount")
	img = filepath.Join(dir, name+".img")
	mnt = filepath.Join(dir, name)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(32 << 20)
	f.Close()
	run(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img)
	opts := "loop"
	if readOnly {
		opts += ",ro"
	}
	run(t, "mount", "-o", opts, img, mnt)
	t.Cleanup(func() {
		// Emergency thaw: never leave a frozen filesystem behind.
		if n, err := (linuxFS{}).thaw(mnt); err != nil || n > 0 {
			t.Logf("cleanup: thawed %s %d times (err %v)", mnt, n, err)
		}
		for i := 0; ; i++ {
			out, err := exec.Command("umount", mnt).CombinedOutput()
			if err == nil {
				return
			}
			if i == 50 {
				t.Errorf("umount %s: %v: %s", mnt, err, out)
				exec.Command("umount", "-l", mnt).Run()
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	return mnt, img
}

func mountTmpfs(t testing.TB, dir, name string) string {
	t.Helper()
	mnt := filepath.Join(dir, name)
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt)
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	return mnt
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newFreezer returns a Freezer restricted to mounts below dir; cleanup
// thaws through it.
func newFreezer(t testing.TB, dir string, cfg Config) *Freezer {
	t.Helper()
	prefix := filepath.Clean(dir) + "/"
	cfg.Select = func(m Mount) bool { return strings.HasPrefix(m.MountPoint, prefix) }
	if cfg.Logger == nil && !testing.Verbose() {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := f.Thaw(context.Background()); err != nil {
			t.Errorf("cleanup thaw: %v", err)
		}
	})
	return f
}

// writer is a child process writing data to a file; it blocks while the
// file's filesystem is frozen.
type writer struct {
	cmd  *exec.Cmd
	done chan error
}

func startWriter(t *testing.T, path, data string) *writer {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", `printf '%s' "$1" > "$2"`, "sh", data, path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &writer{cmd: cmd, done: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, stderr.String())
		}
		w.done <- err
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-w.done:
		case <-time.After(10 * time.Second):
			t.Errorf("writer %d never exited", cmd.Process.Pid)
		}
	})
	return w
}

// waitBlocked waits until the writer sleeps uninterruptibly (state D) in
// the kernel, which is how a write to a frozen filesystem waits.
func (w *writer) waitBlocked(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-w.done:
			t.Fatalf("writer finished while the filesystem was frozen (err %v)", err)
		default:
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", w.cmd.Process.Pid))
		if err == nil {
			if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == 'D' {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("writer never blocked on the frozen filesystem")
}

// finish waits for the writer to complete successfully.
func (w *writer) finish(t *testing.T) {
	t.Helper()
	select {
	case err := <-w.done:
		w.done <- nil // for the cleanup
		if err != nil {
			t.Fatalf("writer: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("writer still blocked: filesystem not thawed")
	}
}

func wantCode(t *testing.T, err error, c codes.Code) {
	t.Helper()
	if status.Code(err) != c {
		t.Fatalf("got %v, want code %v", err, c)
	}
}

func TestFreezeBlocksWriterUntilThaw(t *testing.T) {
	dir := t.TempDir()
	mnt, img := mountImage(t, dir, "data", false)
	before := bytes.Repeat([]byte("sailbox "), 64<<10)
	if err := os.WriteFile(filepath.Join(mnt, "before.txt"), before, 0o644); err != nil {
		t.Fatal(err)
	}
	f := newFreezer(t, dir, Config{})

	rep, err := f.Freeze(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Frozen) != 1 || rep.Frozen[0] != mnt {
		t.Fatalf("frozen %v, want [%s]", rep.Frozen, mnt)
	}
	st := f.Status()
	if st.State != Frozen || st.Since.IsZero() || len(st.Mounts) != 1 || st.WatchdogDeadline.Sub(st.Since) < 50*time.Second {
		t.Fatalf("status %+v", st)
	}

	// Agent code asks first and gets FailedPrecondition instead of hanging.
	wantCode(t, f.CheckWritable(filepath.Join(mnt, "new/dir/file")), codes.FailedPrecondition)
	if err := f.CheckWritable(filepath.Join(dir, "elsewhere")); err != nil {
		t.Fatalf("path outside the frozen fs: %v", err)
	}

	w := startWriter(t, filepath.Join(mnt, "during.txt"), "written across the freeze")
	w.waitBlocked(t)

	// The frozen image is a clean snapshot: fsck finds nothing and the data is in it.
	snap := filepath.Join(dir, "snapshot.img")
	copyFile(t, img, snap)
	if out, err := exec.Command("e2fsck", "-fn", snap).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck of the frozen image: %v\n%s", err, out)
	}
	got, err := exec.Command("debugfs", "-R", "cat /before.txt", snap).Output()
	if err != nil || !bytes.Equal(got, before) {
		t.Fatalf("before.txt in the frozen image: %d bytes, err %v", len(got), err)
	}

	trep, err := f.Thaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !trep.WasFrozen || len(trep.Thawed) != 1 || trep.Thawed[0] != mnt {
		t.Fatalf("thaw report %+v", trep)
	}
	w.finish(t)
	if b, err := os.ReadFile(filepath.Join(mnt, "during.txt")); err != nil || string(b) != "written across the freeze" {
		t.Fatalf("during.txt = %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "before.txt")); err != nil || !bytes.Equal(b, before) {
		t.Fatalf("before.txt changed: %d bytes, %v", len(b), err)
	}
	if err := f.CheckWritable(filepath.Join(mnt, "x")); err != nil {
		t.Fatalf("after thaw: %v", err)
	}
	st = f.Status()
	if st.State != Thawed || st.LastThaw != ThawRequested || !st.WatchdogDeadline.IsZero() {
		t.Fatalf("status after thaw %+v", st)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFreezeAndThawAreIdempotent(t *testing.T) {
	dir := t.TempDir()
	mnt, _ := mountImage(t, dir, "data", false)
	f := newFreezer(t, dir, Config{})
	ctx := context.Background()

	first, err := f.Freeze(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	second, err := f.Freeze(ctx, Options{Watchdog: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !second.AlreadyFrozen || !second.Since.Equal(first.Since) || len(second.Frozen) != 1 {
		t.Fatalf("second freeze %+v", second)
	}
	if !second.WatchdogDeadline.After(first.WatchdogDeadline) {
		t.Fatalf("second freeze did not re-arm the watchdog: %v then %v", first.WatchdogDeadline, second.WatchdogDeadline)
	}
	// One thaw suffices: the second freeze did not nest a second FIFREEZE.
	if _, err := f.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	w := startWriter(t, filepath.Join(mnt, "f"), "x")
	w.finish(t)
	again, err := f.Thaw(ctx)
	if err != nil || again.WasFrozen || len(again.Thawed) != 0 {
		t.Fatalf("second thaw: %+v, %v", again, err)
	}
}

func TestFreezeSkipsReadOnlyAndTmpfs(t *testing.T) {
	dir := t.TempDir()
	rw, _ := mountImage(t, dir, "rw", false)
	ro, _ := mountImage(t, dir, "ro", true)
	tmp := mountTmpfs(t, dir, "tmp")
	f := newFreezer(t, dir, Config{})

	rep, err := f.Freeze(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Frozen) != 1 || rep.Frozen[0] != rw {
		t.Fatalf("frozen %v, want [%s]", rep.Frozen, rw)
	}
	reasons := map[string]string{}
	for _, s := range rep.Skipped {
		reasons[s.MountPoint] = s.Reason
	}
	if reasons[ro] != SkipReadOnly || reasons[tmp] != SkipPseudo {
		t.Fatalf("skipped %+v", rep.Skipped)
	}
	// tmpfs stays writable while the rest is frozen.
	if err := os.WriteFile(filepath.Join(tmp, "ok"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.CheckWritable(filepath.Join(tmp, "ok")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Thaw(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestFreezeExcludesStateDir(t *testing.T) {
	dir := t.TempDir()
	state, _ := mountImage(t, dir, "state", false)
	data, _ := mountImage(t, dir, "data", false)
	f := newFreezer(t, dir, Config{StateFile: filepath.Join(state, "sub", "freeze.json")})
	os.MkdirAll(filepath.Join(state, "sub"), 0o700)
	rep, err := f.Freeze(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Frozen) != 1 || rep.Frozen[0] != data {
		t.Fatalf("frozen %v, want only %s", rep.Frozen, data)
	}
	if _, err := os.Stat(filepath.Join(state, "sub", "freeze.json")); err != nil {
		t.Fatalf("state file: %v", err)
	}
	if _, err := f.Thaw(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, "sub", "freeze.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state file after thaw: %v", err)
	}
}

// hook writes a hook script that logs "<name> <phase>" to logFile and then
// runs body.
func hook(t *testing.T, dir, name, logFile, body string) {
	t.Helper()
	script := fmt.Sprintf("#!/bin/sh\necho \"%s $1\" >> %s\n%s\n", name, logFile, body)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

func readLog(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

func TestHooksRunInOrder(t *testing.T) {
	dir := t.TempDir()
	mountImage(t, dir, "data", false)
	hooks := filepath.Join(t.TempDir(), "hooks")
	os.Mkdir(hooks, 0o755)
	logFile := filepath.Join(t.TempDir(), "log")
	hook(t, hooks, "10-db", logFile, "exit 0")
	hook(t, hooks, "20-cache", logFile, "exit 0")
	os.WriteFile(filepath.Join(hooks, "30-not-executable"), []byte("#!/bin/sh\nexit 1\n"), 0o644)
	os.WriteFile(filepath.Join(hooks, ".hidden"), []byte("#!/bin/sh\nexit 1\n"), 0o755)
	f := newFreezer(t, dir, Config{HooksDir: hooks})

	rep, err := f.Freeze(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Hooks) != 2 {
		t.Fatalf("hooks %v", rep.Hooks)
	}
	trep, err := f.Thaw(context.Background())
	if err != nil || len(trep.Hooks) != 2 || len(trep.Warnings) != 0 {
		t.Fatalf("thaw %+v, %v", trep, err)
	}
	want := "10-db freeze\n20-cache freeze\n20-cache thaw\n10-db thaw\n"
	if got := readLog(t, logFile); got != want {
		t.Fatalf("hook log:\n%s\nwant:\n%s", got, want)
	}
}

func TestFailingHookAbortsFreeze(t *testing.T) {
	dir := t.TempDir()
	mnt, _ := mountImage(t, dir, "data", false)
	hooks := filepath.Join(t.TempDir(), "hooks")
	os.Mkdir(hooks, 0o755)
	logFile := filepath.Join(t.TempDir(), "log")
	hook(t, hooks, "10-ok", logFile, "exit 0")
	hook(t, hooks, "20-fail", logFile, `[ "$1" = freeze ] && { echo "database refuses to quiesce" >&2; exit 3; }; exit 0`)
	hook(t, hooks, "30-never", logFile, "exit 0")
	f := newFreezer(t, dir, Config{HooksDir: hooks})

	_, err := f.Freeze(context.Background(), Options{})
	wantCode(t, err, codes.Aborted)
	if msg := err.Error(); !strings.Contains(msg, "20-fail") || !strings.Contains(msg, "exit status 3") || !strings.Contains(msg, "database refuses to quiesce") {
		t.Fatalf("error does not name the hook and its output: %v", err)
	}
	// The hook that had run is undone; the one after the failure never ran.
	if got, want := readLog(t, logFile), "10-ok freeze\n20-fail freeze\n10-ok thaw\n"; got != want {
		t.Fatalf("hook log:\n%s\nwant:\n%s", got, want)
	}
	if st := f.Status(); st.State != Thawed {
		t.Fatalf("status %+v", st)
	}
	startWriter(t, filepath.Join(mnt, "f"), "x").finish(t)
}

func TestHookTimeoutAbortsFreeze(t *testing.T) {
	dir := t.TempDir()
	mountImage(t, dir, "data", false)
	hooks := filepath.Join(t.TempDir(), "hooks")
	os.Mkdir(hooks, 0o755)
	logFile := filepath.Join(t.TempDir(), "log")
	pidFile := filepath.Join(t.TempDir(), "pid")
	hook(t, hooks, "10-slow", logFile, fmt.Sprintf(`[ "$1" = freeze ] && { sleep 60 & echo $! > %s; wait; }; exit 0`, pidFile))
	f := newFreezer(t, dir, Config{HooksDir: hooks, HookTimeout: 300 * time.Millisecond})

	_, err := f.Freeze(context.Background(), Options{})
	wantCode(t, err, codes.DeadlineExceeded)
	// The hook's whole process group was killed, including its child.
	pid := 0
	fmt.Sscan(readLog(t, pidFile), &pid)
	if pid <= 0 {
		t.Fatal("hook did not record its child's pid")
	}
	deadline := time.Now().Add(5 * time.Second)
	for unix.Kill(pid, 0) == nil {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); bytes.Contains(b, []byte(") Z")) {
			break // killed, waiting for its (re-parented) reaper
		}
		if time.Now().After(deadline) {
			t.Fatalf("hook child %d survived the timeout", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := f.Status(); st.State != Thawed {
		t.Fatalf("status %+v", st)
	}
}

func TestWatchdogThaws(t *testing.T) {
	dir := t.TempDir()
	mnt, _ := mountImage(t, dir, "data", false)
	f := newFreezer(t, dir, Config{})

	if _, err := f.Freeze(context.Background(), Options{Watchdog: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	w := startWriter(t, filepath.Join(mnt, "f"), "after the watchdog")
	w.finish(t) // blocks until the watchdog thaws
	// The filesystems thaw before the state says so: wait for the state.
	deadline := time.Now().Add(10 * time.Second)
	st := f.Status()
	for st.State != Thawed && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		st = f.Status()
	}
	if st.State != Thawed || st.LastThaw != ThawWatchdog {
		t.Fatalf("status %+v", st)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "f")); err != nil || string(b) != "after the watchdog" {
		t.Fatalf("f = %q, %v", b, err)
	}
	// A later thaw is a no-op, a later freeze works again with a fresh watchdog.
	if rep, err := f.Thaw(context.Background()); err != nil || rep.WasFrozen {
		t.Fatalf("thaw after watchdog: %+v, %v", rep, err)
	}
	if _, err := f.Freeze(context.Background(), Options{}); err != nil {
		t.Fatal(err)
	}
	if st := f.Status(); st.State != Frozen {
		t.Fatalf("refreeze: %+v", st)
	}
}

// A mount that cannot be frozen for a reason other than EOPNOTSUPP/EBUSY
// rolls back the mounts frozen before it.
func TestFreezeErrorRollsBack(t *testing.T) {
	dir := t.TempDir()
	mnt, _ := mountImage(t, dir, "data", false)
	real, err := ReadMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, m := range real {
		if m.MountPoint == mnt {
			line = fmt.Sprintf("%d %d %d:%d / %s rw,relatime - ext4 %s rw\n", m.ID, m.ParentID, m.Major, m.Minor, m.MountPoint, m.Source)
		}
	}
	if line == "" {
		t.Fatalf("%s not in mountinfo", mnt)
	}
	// Reverse order: the real mount is frozen first, then the vanished one fails.
	gone := filepath.Join(dir, "vanished")
	fake := fmt.Sprintf("900 1 7:250 / %s rw - ext4 /dev/loop250 rw\n", gone) + line
	mi := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mi, []byte(fake), 0o644)
	f := newFreezer(t, dir, Config{MountInfo: mi})

	_, err = f.Freeze(context.Background(), Options{})
	wantCode(t, err, codes.Internal)
	if !strings.Contains(err.Error(), gone) {
		t.Fatalf("error does not name the mount: %v", err)
	}
	st := f.Status()
	if st.State != Thawed || st.LastThaw != ThawRollback {
		t.Fatalf("status %+v", st)
	}
	startWriter(t, filepath.Join(mnt, "f"), "x").finish(t)
}

func TestCgroupFreeze(t *testing.T) {
	testcap.Root(t)
	root := cgroup2Root(t)
	cg := filepath.Join(root, fmt.Sprintf("sailbox-freeze-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		testcap.Missing(t, "create a cgroup v2 group: "+err.Error())
	}
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(cg, "cgroup.freeze"), []byte("0"), 0)
		os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0) // the workload's children too
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := os.Remove(cg)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup: %v", err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	cgfd, err := unix.Open(cg, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cgfd)
	// A workload that counts; frozen, it stops counting.
	counter := filepath.Join(t.TempDir(), "count")
	cmd := exec.Command("/bin/sh", "-c", `i=0; while :; do i=$((i+1)); echo $i > "$1"; sleep 0.01; done`, "sh", counter)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	dir := t.TempDir()
	mountImage(t, dir, "data", false)
	f := newFreezer(t, dir, Config{})
	rep, err := f.Freeze(context.Background(), Options{Cgroups: []string{cg}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Cgroups) != 1 || len(rep.Frozen) != 1 {
		t.Fatalf("report %+v", rep)
	}
	if frozen, err := cgroupFrozen(cg); err != nil || !frozen {
		t.Fatalf("cgroup.events frozen=%v, %v", frozen, err)
	}
	n1 := readLog(t, counter)
	time.Sleep(100 * time.Millisecond)
	if n2 := readLog(t, counter); n1 != n2 {
		t.Fatalf("frozen workload kept counting: %q -> %q", n1, n2)
	}
	trep, err := f.Thaw(context.Background())
	if err != nil || len(trep.Cgroups) != 1 {
		t.Fatalf("thaw %+v, %v", trep, err)
	}
	if frozen, err := cgroupFrozen(cg); err != nil || frozen {
		t.Fatalf("after thaw cgroup.events frozen=%v, %v", frozen, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for readLog(t, counter) == n1 {
		if time.Now().After(deadline) {
			t.Fatal("workload did not resume after thaw")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_, err = f.Freeze(context.Background(), Options{Cgroups: []string{"relative/cg"}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = f.Freeze(context.Background(), Options{Cgroups: []string{t.TempDir()}})
	wantCode(t, err, codes.InvalidArgument)
}

func cgroup2Root(t *testing.T) string {
	ms, err := ReadMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.FSType == "cgroup2" && !m.ReadOnly() {
			return m.MountPoint
		}
	}
	testcap.Missing(t, "a writable cgroup v2 mount")
	return ""
}

// An agent restarted while frozen learns it from the state file, and its
// thaw (or watchdog) undoes the freeze.
func TestStateFileSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	mnt, _ := mountImage(t, dir, "data", false)
	stateFile := filepath.Join(t.TempDir(), "freeze.json")
	first := newFreezer(t, dir, Config{StateFile: stateFile})
	rep, err := first.Freeze(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	first.opMu.Lock() // the first agent "dies": its watchdog must not interfere
	first.timer.Stop()
	first.opMu.Unlock()

	second := newFreezer(t, dir, Config{StateFile: stateFile, Watchdog: time.Hour})
	st := second.Status()
	if st.State != Frozen || !st.Since.Equal(rep.Since) || len(st.Mounts) != 1 || st.Mounts[0] != mnt {
		t.Fatalf("restarted status %+v", st)
	}
	wantCode(t, second.CheckWritable(filepath.Join(mnt, "x")), codes.FailedPrecondition)
	trep, err := second.Thaw(context.Background())
	if err != nil || len(trep.Thawed) != 1 {
		t.Fatalf("thaw %+v, %v", trep, err)
	}
	startWriter(t, filepath.Join(mnt, "f"), "x").finish(t)
}

// BenchmarkFreezeThaw measures one freeze+thaw of an idle ext4 filesystem
// (target <= 50 ms).
func BenchmarkFreezeThaw(b *testing.B) {
	dir := b.TempDir()
	mountImage(b, dir, "data", false)
	f := newFreezer(b, dir, Config{})
	ctx := context.Background()
	for b.Loop() {
		if _, err := f.Freeze(ctx, Options{}); err != nil {
			b.Fatal(err)
		}
		if _, err := f.Thaw(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawFreezeThaw is the baseline: syncfs + FIFREEZE + FITHAW on the
// same kind of filesystem without the Freezer (mountinfo, state, watchdog).
func BenchmarkRawFreezeThaw(b *testing.B) {
	dir := b.TempDir()
	mnt, _ := mountImage(b, dir, "data", false)
	fs := linuxFS{}
	for b.Loop() {
		if err := fs.syncfs(mnt); err != nil {
			b.Fatal(err)
		}
		if _, err := fs.freeze(mnt); err != nil {
			b.Fatal(err)
		}
		if n, err := fs.thaw(mnt); err != nil || n != 1 {
			b.Fatalf("thaw: %d, %v", n, err)
		}
	}
}
