package rootfs

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
)

// hostRoot makes a tiny root of host binaries (sh, sleep) and their
// libraries, enough to exercise the chroot helper without emulation.
func hostRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"bin", "proc", "sys", "dev", "work", "tmp"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	for _, bin := range []string{"/bin/sh", "/bin/sleep"} {
		real, err := filepath.EvalSymlinks(bin)
		if err != nil {
			t.Fatal(err)
		}
		copyInto(t, root, real, bin)
		out, err := exec.Command("ldd", real).Output()
		if err != nil {
			t.Fatalf("ldd %s: %v", real, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			for _, f := range strings.Fields(line) {
				if strings.HasPrefix(f, "/") {
					copyInto(t, root, f, f)
				}
			}
		}
	}
	return root
}

func copyInto(t *testing.T, root, src, dst string) {
	t.Helper()
	fi, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(root, dst)
	os.MkdirAll(filepath.Dir(target), 0o755)
	if err := copyFile(src, target, fi.Mode().Perm()); err != nil {
		t.Fatal(err)
	}
}

// nsInode returns the inode naming a process's namespace (mnt, pid).
func nsInode(pid int, ns string) string {
	l, _ := os.Readlink(filepath.Join("/proc", itoa(pid), "ns", ns))
	return l
}

func itoa(i int) string { return strconv.Itoa(i) }

// processesIn lists host PIDs whose namespace link equals inode.
func processesIn(ns, inode string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		if l, _ := os.Readlink(filepath.Join("/proc", e.Name(), "ns", ns)); l == inode {
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// hostMountsUnder lists the host's mount points under dir.
func hostMountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

type runCase struct {
	name    string
	script  string
	timeout time.Duration
	check   func(t *testing.T, res chrootResult, err error, log string)
}

func TestChrootMountsAndCleanup(t *testing.T) {
	testcap.Root(t)
	root := hostRoot(t)
	cases := []runCase{
		{name: "success", script: `cd /work && echo "dir=$(pwd) foo=$FOO"; while read -r a b c d mp rest; do echo "mount $mp"; done < /proc/self/mountinfo; sleep 1000 & echo started`,
			check: func(t *testing.T, res chrootResult, err error, log string) {
				if err != nil {
					t.Fatalf("err = %v\n%s", err, log)
				}
				for _, want := range []string{"dir=/work foo=bar", "mount /proc", "mount /sys", "mount /dev", "started"} {
					if !strings.Contains(log, want+"\n") {
						t.Errorf("output lacks %q:\n%s", want, log)
					}
				}
				if len(res.Unmounted) != 3 || res.Unmounted[0] != filepath.Join(root, "dev") {
					t.Errorf("helper unmounted %v, want dev, sys, proc", res.Unmounted)
				}
			}},
		{name: "failure", script: `echo failing; exit 7`,
			check: func(t *testing.T, res chrootResult, err error, log string) {
				var ee *exitError
				if !errors.As(err, &ee) || ee.Code != 7 {
					t.Fatalf("err = %v, want exit code 7", err)
				}
				if len(res.Unmounted) != 3 {
					t.Errorf("helper unmounted %v after a failure", res.Unmounted)
				}
			}},
		{name: "timeout", script: `sleep 1000 & sleep 1000`, timeout: 500 * time.Millisecond,
			check: func(t *testing.T, res chrootResult, err error, log string) {
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("err = %v, want deadline exceeded", err)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			if c.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, c.timeout)
				defer cancel()
			}
			var mntNS, pidNS string
			var log strings.Builder
			spec := chrootSpec{Root: root, Argv: []string{"sh", "-c", c.script}, Env: []string{"FOO=bar", "PATH=/bin"}, Dir: "/", Mounts: chrootMounts()}
			res, err := runChroot(ctx, spec, &log, func(pid int) {
				// Start returns after the exec: the namespaces exist.
				mntNS, pidNS = nsInode(pid, "mnt"), nsInode(pid, "pid_for_children")
			})
			c.check(t, res, err, log.String())
			if mntNS == "" || mntNS == nsInode(os.Getpid(), "mnt") {
				t.Fatalf("helper's mount namespace %q is not private", mntNS)
			}
			// Every process of the step is gone, background ones included,
			// and with them the mount namespace holding the mounts.
			if p := processesIn("mnt", mntNS); len(p) > 0 {
				t.Errorf("processes still in the step's mount namespace: %v", p)
			}
			if p := processesIn("pid", pidNS); len(p) > 0 {
				t.Errorf("processes still in the step's PID namespace: %v", p)
			}
			if m := hostMountsUnder(t, root); len(m) > 0 {
				t.Errorf("mounts left on the host: %v", m)
			}
		})
	}
}

func TestChrootMountsSpec(t *testing.T) {
	m := chrootMounts()
	want := []string{"/proc", "/sys", "/dev"}
	for i, w := range want {
		if m[i].Target != w {
			t.Fatalf("mount %d = %+v, want %s", i, m[i], w)
		}
	}
	if m[0].FSType != "proc" || m[1].Source != "/sys" || m[2].Source != "/dev" {
		t.Fatalf("mounts = %+v", m)
	}
}

func TestBinfmtDetection(t *testing.T) {
	info := bases[BaseDebianArm64]
	dir := t.TempDir()
	if _, _, _, ok := findBinfmtEntry(dir, info); ok {
		t.Fatal("found an entry in an empty directory")
	}
	// An arm (32-bit) entry must not count for arm64.
	os.WriteFile(filepath.Join(dir, "qemu-arm"), []byte("enabled\ninterpreter /usr/bin/qemu-arm-static\nflags: F\noffset 0\nmagic 7f454c4601010100000000000000000002002800\nmask ffffffffffffff00fffffffffffffffffeffffff\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "status"), []byte("enabled\n"), 0o644)
	if _, _, _, ok := findBinfmtEntry(dir, info); ok {
		t.Fatal("arm entry taken for arm64")
	}
	os.WriteFile(filepath.Join(dir, "qemu-aarch64"), []byte("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n"), 0o644)
	name, interp, fixed, ok := findBinfmtEntry(dir, info)
	if !ok || name != "qemu-aarch64" || interp != "/usr/libexec/qemu-binfmt/aarch64-binfmt-P" || !fixed {
		t.Fatalf("got %q %q %v %v", name, interp, fixed, ok)
	}
	if _, _, _, ok := findBinfmtEntry(dir, bases[BaseDebianArm]); !ok {
		t.Fatal("arm entry not found for debian_arm")
	}
	line := registerLine(info, "/usr/bin/qemu-aarch64-static")
	if line != `:sailbox-arm64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F` {
		t.Fatalf("register line = %s", line)
	}
}

func TestShellQuote(t *testing.T) {
	got := shellQuote([]string{"/bin/sh", "-c", "echo 'hi' $X", ""})
	if got != `/bin/sh -c 'echo '\''hi'\'' $X' ''` {
		t.Fatalf("got %s", got)
	}
}

func TestChrootPrivateBinfmt(t *testing.T) {
	testcap.Root(t)
	info := bases[BaseDebianArm64]
	emu, err := detectEmulation(info)
	if err != nil {
		testcap.Missing(t, err.Error())
	}
	if emu.Native {
		t.Skip("host is arm64: nothing to emulate")
	}
	root := hostRoot(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\nimport (\"fmt\"; \"runtime\")\nfunc main() { fmt.Println(\"hello from\", runtime.GOARCH) }\n"), 0o644)
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module hello\ngo 1.21\n"), 0o644)
	build := exec.Command("go", "build", "-o", filepath.Join(root, "bin", "hello"), ".")
	build.Dir = src
	build.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	bfm := t.TempDir()
	before, _ := os.ReadDir(binfmtDir)
	spec := chrootSpec{Root: root, Argv: []string{"/bin/hello"}, Dir: "/", Mounts: chrootMounts(),
		UserNS: true, Binfmt: &binfmtReg{MountDir: bfm, Register: registerLine(info, emu.Interp)}}
	var log strings.Builder
	if _, err := runChroot(context.Background(), spec, &log, nil); err != nil {
		t.Fatalf("run arm64 binary: %v\n%s", err, log.String())
	}
	if !strings.Contains(log.String(), "hello from arm64") {
		t.Fatalf("output = %q", log.String())
	}
	// The registration lived in the helper's user namespace only.
	after, _ := os.ReadDir(binfmtDir)
	if len(after) != len(before) {
		t.Fatalf("host binfmt_misc changed: %v -> %v", before, after)
	}
	if m := hostMountsUnder(t, bfm); len(m) > 0 {
		t.Fatalf("binfmt_misc mount left on the host: %v", m)
	}
}
