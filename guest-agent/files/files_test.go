package files

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func u32(v uint32) *uint32 { return &v }

func writeFile(t *testing.T, spec WriteSpec, data []byte) (Info, error) {
	t.Helper()
	if spec.UID == 0 && spec.GID == 0 {
		spec.UID, spec.GID = -1, -1
	}
	w, err := Create(spec)
	if err != nil {
		return Info{}, err
	}
	if _, err := w.Write(data); err != nil {
		w.Abort()
		return Info{}, err
	}
	return w.Commit()
}

func wantCode(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(err.Error(), substr) {
		t.Fatalf("got %v, want %v containing %q", err, code, substr)
	}
}

func noTemps(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".sailbox-tmp-") {
			t.Fatalf("temp file left behind: %s", filepath.Join(dir, e.Name()))
		}
	}
}

func TestWriteModesExactlyDespiteUmask(t *testing.T) {
	bothTempKinds(t, testWriteModes)
}

func testWriteModes(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	for _, mode := range []uint32{0o644, 0o600, 0o4755, 0o2750, 0o1777, 0o7777, 0} {
		p := filepath.Join(dir, "f")
		info, err := writeFile(t, WriteSpec{Path: p, Mode: u32(mode)}, []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&0o7777 != mode || info.Mode != mode {
			t.Errorf("mode %#o: file has %#o, info %#o", mode, st.Mode&0o7777, info.Mode)
		}
	}
	// Default mode and created parents.
	p := filepath.Join(dir, "a", "b", "c", "f")
	if _, err := writeFile(t, WriteSpec{Path: p}, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"a", "a/b", "a/b/c"} {
		fi, err := os.Stat(filepath.Join(dir, d))
		if err != nil || fi.Mode().Perm() != DirMode {
			t.Errorf("parent %s: %v %v, want %#o", d, fi.Mode(), err, DirMode)
		}
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != DefaultMode {
		t.Errorf("default mode: %v", fi.Mode())
	}
	noTemps(t, dir)
}

// bothTempKinds runs f with unnamed (O_TMPFILE) and named temp files.
func bothTempKinds(t *testing.T, f func(t *testing.T)) {
	for _, named := range []bool{false, true} {
		t.Run(map[bool]string{false: "O_TMPFILE", true: "named"}[named], func(t *testing.T) {
			noTmpfile = named
			defer func() { noTmpfile = false }()
			f(t)
		})
	}
}

func TestWriteReplacesAtomicallyAndAbortKeepsOld(t *testing.T) {
	bothTempKinds(t, testWriteReplaces)
}

func testWriteReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if _, err := writeFile(t, WriteSpec{Path: p}, []byte("old")); err != nil {
		t.Fatal(err)
	}
	w, err := Create(WriteSpec{Path: p, UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("new content, half"))
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("target changed before commit: %q", b)
	}
	if noTmpfile {
		if _, err := os.Stat(w.TempPath()); err != nil || filepath.Dir(w.TempPath()) != dir {
			t.Fatalf("temp %s: %v", w.TempPath(), err)
		}
	} else if w.TempPath() != "" {
		t.Fatalf("O_TMPFILE temp file has a name: %s", w.TempPath())
	}
	w.Abort()
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("abort changed target: %q", b)
	}
	noTemps(t, dir)

	// Through a symlink: the link stays, its target is replaced.
	link := filepath.Join(dir, "link")
	os.Symlink("f", link)
	if _, err := writeFile(t, WriteSpec{Path: link}, []byte("via link")); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("link replaced")
	}
	if b, _ := os.ReadFile(p); string(b) != "via link" {
		t.Fatalf("target: %q", b)
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	reg := filepath.Join(dir, "reg")
	os.WriteFile(reg, []byte("x"), 0o644)
	cases := []struct {
		spec WriteSpec
		code codes.Code
		msg  string
	}{
		{WriteSpec{Path: ""}, codes.InvalidArgument, "empty path"},
		{WriteSpec{Path: "rel/f"}, codes.InvalidArgument, "not absolute"},
		{WriteSpec{Path: dir + "/a\x00b"}, codes.InvalidArgument, "NUL"},
		{WriteSpec{Path: reg + "/f"}, codes.FailedPrecondition, "parent " + reg + " is a regular file"},
		{WriteSpec{Path: reg + "/x/y/f"}, codes.FailedPrecondition, "parent " + reg + " is a regular file"},
		{WriteSpec{Path: dir + "/missing/f", NoParents: true}, codes.FailedPrecondition, "does not exist"},
		{WriteSpec{Path: dir}, codes.FailedPrecondition, "is a directory"},
		{WriteSpec{Path: dir + "/f", Mode: u32(0o10644)}, codes.InvalidArgument, "mode"},
	}
	for _, c := range cases {
		_, err := writeFile(t, c.spec, []byte("x"))
		wantCode(t, err, c.code, c.msg)
	}
	if _, err := os.Stat(dir + "/missing"); err == nil {
		t.Fatal("no_parents created the parent")
	}
	noTemps(t, dir)
}

func TestWriteENOSPCIsResourceExhausted(t *testing.T) {
	testcap.Root(t)
	bothTempKinds(t, testENOSPC)
}

func testENOSPC(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	p := filepath.Join(dir, "big")
	os.WriteFile(p, []byte("old"), 0o644)
	w, err := Create(WriteSpec{Path: p, UID: -1, GID: -1})
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 256<<10)
	for i := 0; i < 16 && err == nil; i++ {
		_, err = w.Write(chunk)
	}
	wantCode(t, err, codes.ResourceExhausted, "no space left")
	w.Abort()
	noTemps(t, dir)
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("old file: %q", b)
	}
}

func TestReadRefusesNonRegularAtOnce(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	link := filepath.Join(dir, "link-to-fifo")
	os.Symlink(fifo, link)
	for p, kind := range map[string]string{
		"/dev/zero": "character device", dir: "directory", fifo: "FIFO", sock: "socket", link: "FIFO",
	} {
		start := time.Now()
		_, err := Open(p)
		wantCode(t, err, codes.FailedPrecondition, "is a "+kind)
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s took %v", p, d)
		}
	}
	_, err = Open(filepath.Join(dir, "nope"))
	wantCode(t, err, codes.NotFound, "nope")
	_, err = Open("relative")
	wantCode(t, err, codes.InvalidArgument, "not absolute")
}

func TestReadAtAndStat(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte("0123456789"), 0o640)
	r, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b := make([]byte, 4)
	n, err := r.ReadAt(b, 3)
	if n != 4 || string(b) != "3456" || err != nil {
		t.Fatalf("ReadAt: %d %q %v", n, b, err)
	}
	n, err = r.ReadAt(b, 8)
	if n != 2 || err != io.EOF {
		t.Fatalf("ReadAt at end: %d %v", n, err)
	}
	if r.Info.Size != 10 || r.Info.Type != TypeRegular || r.Info.Mode != 0o640 {
		t.Fatalf("info %+v", r.Info)
	}
	link := filepath.Join(dir, "l")
	os.Symlink("f", link)
	info, err := Stat(link)
	if err != nil || info.Type != TypeSymlink || info.SymlinkTarget != "f" {
		t.Fatalf("stat link: %+v %v", info, err)
	}
	info, err = Stat(dir)
	if err != nil || info.Type != TypeDirectory {
		t.Fatalf("stat dir: %+v %v", info, err)
	}
	_, err = Stat(filepath.Join(dir, "nope"))
	wantCode(t, err, codes.NotFound, "nope")
}

// Permission errors as a non-root user: a helper process runs the check.
func TestPermissionDenied(t *testing.T) {
	if os.Getenv("FILES_TEST_UNPRIV") == "1" {
		_, err := Open("/etc/shadow")
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("read /etc/shadow: %v", err)
		}
		_, err = Create(WriteSpec{Path: "/root/sailbox-denied/f", UID: -1, GID: -1})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("write under /root: %v", err)
		}
		return
	}
	testcap.Root(t)
	// The test binary's own dir is private to root: run a copy.
	bin := filepath.Join(worldReadableDir(t), "files.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestPermissionDenied$", "-test.v")
	cmd.Env = append(os.Environ(), "FILES_TEST_UNPRIV=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || !strings.Contains(out.String(), "PASS") {
		t.Fatalf("as uid 65534: %v\n%s", err, out.String())
	}
}

func worldReadableDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "files-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	os.Chmod(d, 0o755)
	return d
}
