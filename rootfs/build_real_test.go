package rootfs

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/vm"
	"github.com/sailbox/sailbox/internal/testcap"
	"github.com/sailbox/sailbox/rootfs/envfile"
)

// guestBins builds the static arm64 agent and imageinit for a test, the way
// `make build` does (without the version stamp, so unchanged sources give
// the same binaries and the same image id).
func guestBins(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("../imageinit/main.go"); err != nil {
		testcap.Missing(t, "imageinit/main.go (the image's /sbin/init) is not in the tree yet")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, p := range []string{"guest-agent", "imageinit"} {
		if err := vm.BuildArm64(ctx, "github.com/sailbox/sailbox/"+p, filepath.Join(dir, p)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var demo struct {
	sync.Mutex
	def  Image
	b    *Builder
	res  *Result
	bins string
}

// demoImage builds (once per test binary) the demo definition: debian_arm64
// + apt_install curl + env APP_ENV=demo.
func demoImage(t *testing.T) (Image, *Builder, *Result) {
	t.Helper()
	if testing.Short() {
		t.Skip("the real image build takes minutes cold (-short)")
	}
	testcap.Root(t)
	for _, c := range []string{"debootstrap", "qemu-aarch64-static", "mkfs.ext4", "debugfs", "cp"} {
		testcap.Command(t, c)
	}
	demo.Lock()
	defer demo.Unlock()
	if demo.res != nil {
		return demo.def, demo.b, demo.res
	}
	bins := guestBins(t)
	// The binaries outlive this test: later tests use them through b.
	keep, err := os.MkdirTemp("", "rootfs-bins-")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"guest-agent", "imageinit"} {
		if err := copyFile(filepath.Join(bins, n), filepath.Join(keep, n), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	def := DebianArm64().AptInstall("curl").Env(map[string]string{"APP_ENV": "demo"})
	var progress strings.Builder
	b := &Builder{BinDir: keep, Progress: &progress}
	res, err := b.Build(context.Background(), def)
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	b.Progress = nil
	demo.def, demo.b, demo.res, demo.bins = def, b, res, keep
	return def, b, res
}

// TestBuildDebianArm64 is the real build: debootstrap from the host's
// mirror, apt under qemu-user, the VM kernel's modules, mkfs.ext4. The
// cache (${SAILBOX_CACHE:-~/.cache/sailbox}) makes later runs fast; the
// cold build takes minutes on 2 cores.
func TestBuildDebianArm64(t *testing.T) {
	def, b, first := demoImage(t)
	ctx := context.Background()
	t.Logf("first build: %s (cached=%v, from step %d), image %s", first.Elapsed.Round(time.Millisecond), first.Cached, first.FromStep, first.Path)
	again, err := b.Build(ctx, def)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cached || again.Path != first.Path {
		t.Fatalf("rebuild of the same definition was not a cache hit: %+v", again)
	}
	t.Logf("cached rebuild: %s", again.Elapsed.Round(time.Microsecond))

	// Look inside the real ext4, not the work tree: dump it with debugfs.
	tree := t.TempDir()
	if out, err := exec.Command("debugfs", "-R", "rdump / "+tree, first.Path).CombinedOutput(); err != nil {
		t.Fatalf("debugfs rdump: %v\n%s", err, out)
	}
	env, err := os.ReadFile(filepath.Join(tree, "etc/sailbox/env"))
	if err != nil {
		t.Fatal(err)
	}
	vars, err := envfile.Parse(strings.NewReader(string(env)))
	if err != nil || len(vars) != 1 || vars[0] != (envfile.Var{Key: "APP_ENV", Value: "demo"}) {
		t.Fatalf("env file = %q (%v)", env, err)
	}
	var m Manifest
	mb, err := os.ReadFile(filepath.Join(tree, "etc/sailbox/image.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	want, _ := def.Digest()
	if m.Digest != want || m.ID != first.ID || len(m.Steps) != 2 || m.Agent.SHA256 == "" {
		t.Fatalf("manifest = %s", mb)
	}
	for _, p := range []string{"usr/bin/guest-agent", "usr/sbin/init", "init"} {
		if fi, err := os.Stat(filepath.Join(tree, p)); err != nil || fi.Mode()&0o111 == 0 {
			t.Errorf("%s: %v", p, err)
		}
	}
	if m.Kernel == nil || len(m.Kernel.Loaded) == 0 {
		t.Fatalf("no kernel modules in the manifest")
	}
	for _, p := range m.Kernel.Loaded {
		if _, err := os.Stat(filepath.Join(tree, p)); err != nil {
			t.Errorf("module %s: %v", p, err)
		}
	}
	if first.KernelImage == "" {
		t.Error("no vmlinuz beside the image")
	}
	if _, err := os.Stat(filepath.Join(tree, "usr/bin/qemu-aarch64-static")); err == nil {
		t.Error("the build's qemu-aarch64-static was left in the image")
	}

	// curl runs in the image (arm64, under qemu-user in the chroot helper).
	emu, err := detectEmulation(bases[BaseDebianArm64])
	if err != nil {
		t.Fatal(err)
	}
	spec := chrootSpec{Root: tree, Argv: []string{"curl", "--version"}, Env: baseEnv(), Dir: "/", Mounts: chrootMounts(), UserNS: emu.UserNS}
	if emu.UserNS {
		spec.Binfmt = &binfmtReg{MountDir: t.TempDir(), Register: registerLine(bases[BaseDebianArm64], emu.Interp)}
	} else if !emu.Native && !emu.SystemFixed {
		os.MkdirAll(filepath.Join(tree, filepath.Dir(emu.SystemInterp)), 0o755)
		copyFile(emu.SystemInterp, filepath.Join(tree, emu.SystemInterp), 0o755)
	}
	var out strings.Builder
	if _, err := runChroot(ctx, spec, &out, nil); err != nil {
		t.Fatalf("curl --version in the image: %v\n%s", err, out.String())
	}
	if !strings.HasPrefix(out.String(), "curl ") || !strings.Contains(out.String(), "aarch64") {
		t.Fatalf("curl --version = %q", out.String())
	}
	t.Logf("in the image: %s", strings.SplitN(out.String(), "\n", 2)[0])
}

func TestMain(m *testing.M) {
	code := m.Run()
	if demo.bins != "" {
		os.RemoveAll(demo.bins)
	}
	os.Exit(code)
}
