package rootfs

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sailbox/sailbox/internal/testcap"
)

func TestStepCommands(t *testing.T) {
	tree := t.TempDir()
	argvs := func(cs []stepCmd) [][]string {
		var out [][]string
		for _, c := range cs {
			out = append(out, c.Argv)
		}
		return out
	}
	// Fresh tree: apt needs its lists first.
	got := argvs(stepCommands(Step{Kind: KindAptInstall, Packages: []string{"curl", "git"}}, tree))
	want := [][]string{
		{"apt-get", "-q", "update"},
		{"apt-get", "-q", "-y", "--no-install-recommends", "install", "curl", "git"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("apt = %q", got)
	}
	os.MkdirAll(filepath.Join(tree, "var/lib/apt/lists"), 0o755)
	os.WriteFile(filepath.Join(tree, "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_main_binary-arm64_Packages"), nil, 0o644)
	got = argvs(stepCommands(Step{Kind: KindAptInstall, Packages: []string{"curl"}}, tree))
	if len(got) != 1 || got[0][len(got[0])-1] != "curl" {
		t.Fatalf("apt with lists = %q", got)
	}
	// pip without pip installs python3-pip/venv first, then uses python3 -m pip.
	got = argvs(stepCommands(Step{Kind: KindPipInstall, Packages: []string{"requests==2.31.0", "numpy<2"}}, tree))
	want = [][]string{
		{"apt-get", "-q", "-y", "--no-install-recommends", "install", "python3", "python3-pip", "python3-venv"},
		{"python3", "-m", "pip", "install", "--no-cache-dir", "--break-system-packages", "--root-user-action=ignore", "--", "requests==2.31.0", "numpy<2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("pip = %q", got)
	}
	os.MkdirAll(filepath.Join(tree, "usr/lib/python3/dist-packages/pip"), 0o755)
	if got = argvs(stepCommands(Step{Kind: KindPipInstall, Packages: []string{"x"}}, tree)); len(got) != 1 {
		t.Fatalf("pip with pip present = %q", got)
	}
	// Shell commands are one argv element each, run by /bin/sh -c.
	cmd := `echo "$HOME" > /x; rm -f '/tmp/a b'`
	rc := stepCommands(Step{Kind: KindRunCommands, Commands: []string{cmd, "true"}}, tree)
	if len(rc) != 2 || !reflect.DeepEqual(rc[0].Argv, []string{"/bin/sh", "-c", cmd}) || rc[0].Dir != "/" {
		t.Fatalf("run = %+v", rc)
	}
	bc := stepCommands(Step{Kind: KindBuild, Dest: "/app", Commands: []string{"make"}}, tree)
	if len(bc) != 1 || bc[0].Dir != "/app" || !reflect.DeepEqual(bc[0].Argv, []string{"/bin/sh", "-c", "make"}) {
		t.Fatalf("build = %+v", bc)
	}
	if ec := stepCommands(Step{Kind: KindEnv, Env: map[string]string{"A": "1"}}, tree); len(ec) != 0 {
		t.Fatalf("env runs %+v", ec)
	}
}

func TestStepEnv(t *testing.T) {
	im := DebianArm64().RunCommands("true").Env(map[string]string{"A": "1", "B": "2"}).RunCommands("true").
		Env(map[string]string{"A": "3"}).RunCommands("true")
	steps := im.steps
	has := func(env []string, kv string) bool {
		for _, e := range env {
			if e == kv {
				return true
			}
		}
		return false
	}
	if e := stepEnv(steps, 1); has(e, "A=1") || !has(e, "DEBIAN_FRONTEND=noninteractive") {
		t.Fatalf("step 1 env = %q", e)
	}
	if e := stepEnv(steps, 3); !has(e, "A=1") || !has(e, "B=2") {
		t.Fatalf("step 3 env = %q", e)
	}
	if e := stepEnv(steps, 5); !has(e, "A=3") || has(e, "A=1") || !has(e, "B=2") {
		t.Fatalf("step 5 env = %q", e)
	}
	if got := mustFormatEnv(imageEnv(steps, len(steps))); !strings.HasSuffix(got, "\nA=3\nB=2\n") {
		t.Fatalf("env file = %q", got)
	}
}

func TestResolveInRoot(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755)
	os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755)
	os.Symlink("usr/sbin", filepath.Join(root, "sbin"))
	os.Symlink("/usr/lib", filepath.Join(root, "lib"))        // absolute: relative to the root
	os.Symlink("../../../../etc", filepath.Join(root, "esc")) // climbs out: clamped at the root
	cases := map[string]string{
		"/sbin/init":              "usr/sbin/init",
		"/lib/modules/x/a.ko":     "usr/lib/modules/x/a.ko",
		"/esc/passwd":             "etc/passwd",
		"/../../etc/shadow":       "etc/shadow",
		"/usr/bin/guest-agent":    "usr/bin/guest-agent",
		"/sbin":                   "sbin", // the last component is not followed
		"/etc/sailbox/image.json": "etc/sailbox/image.json",
	}
	for in, want := range cases {
		got, err := resolveInRoot(root, in, false)
		if err != nil {
			t.Fatal(err)
		}
		if got != filepath.Join(root, want) {
			t.Errorf("resolveInRoot(%s) = %s, want <root>/%s", in, got, want)
		}
	}
	os.Symlink("loop", filepath.Join(root, "loop"))
	if _, err := resolveInRoot(root, "/loop/x", false); err == nil {
		t.Error("symlink loop: no error")
	}
}

func TestImageSizing(t *testing.T) {
	used, inodes := int64(300<<20), int64(12000)
	size := sizeFor(used, inodes, 256)
	if size%(4<<20) != 0 || size < used+256<<20 || size > used*2+256<<20 {
		t.Fatalf("size %d MiB for %d MiB content", size>>20, used>>20)
	}
	argv := mkfsArgv("/t", "/o/rootfs.ext4", size, inodes)
	want := []string{"mkfs.ext4", "-q", "-F", "-L", "sailbox-root", "-m", "0", "-N", "44768", "-E", "root_owner=0:0", "-d", "/t", "/o/rootfs.ext4"}
	if !reflect.DeepEqual(argv[:len(want)], want) || argv[len(argv)-1] != strings.TrimSuffix(argv[len(argv)-1], "k")+"k" {
		t.Fatalf("mkfs argv = %q", argv)
	}
}

func TestCachePrefixAndRemove(t *testing.T) {
	c := OpenCache(t.TempDir())
	a := DebianArm64().AptInstall("curl")
	b := a.Env(map[string]string{"A": "1"}).RunCommands("true")
	da, _ := a.StepDigests()
	db, _ := b.StepDigests()
	if c.LongestPrefix(db) != -1 {
		t.Fatal("empty cache has a prefix")
	}
	os.MkdirAll(filepath.Join(c.stepDir(da[0]), "rootfs"), 0o755)
	if got := c.LongestPrefix(db); got != 0 {
		t.Fatalf("prefix = %d, want 0 (the base)", got)
	}
	os.MkdirAll(filepath.Join(c.stepDir(da[1]), "rootfs"), 0o755)
	os.MkdirAll(filepath.Join(c.stepDir(db[2]), "rootfs"), 0o755)
	if got := c.LongestPrefix(db); got != 2 {
		t.Fatalf("prefix = %d, want 2", got)
	}
	// A step dir without its tree (an interrupted copy) does not count.
	os.MkdirAll(c.stepDir(db[3]), 0o755)
	if got := c.LongestPrefix(db); got != 2 {
		t.Fatalf("prefix = %d with a partial entry, want 2", got)
	}

	// Two images sharing steps: rm keeps what the other still uses.
	put := func(id string, digests []string, at time.Time) {
		dir := c.imageDir(id)
		os.MkdirAll(dir, 0o755)
		m, _ := json.Marshal(Manifest{ID: id, Digest: digests[len(digests)-1], StepDigests: digests, BuiltAt: at})
		os.WriteFile(filepath.Join(dir, "image.json"), m, 0o644)
		os.WriteFile(filepath.Join(dir, "rootfs.ext4"), []byte("x"), 0o644)
	}
	put("aaaa1111", da, time.Now().Add(-time.Hour))
	put("bbbb2222", db, time.Now())
	list, err := c.List()
	if err != nil || len(list) != 2 || list[0].ID != "bbbb2222" {
		t.Fatalf("list = %+v, %v", list, err)
	}
	if _, ok := c.Lookup("aaaa1111"); !ok {
		t.Fatal("lookup failed")
	}
	// Older images of one definition beyond the newest keep are pruned.
	put("cccc0001", db, time.Now().Add(-3*time.Hour))
	put("cccc0002", db, time.Now().Add(-2*time.Hour))
	if pruned := c.prune(db[len(db)-1], 2); len(pruned) != 1 || filepath.Base(pruned[0]) != "cccc0001" {
		t.Fatalf("pruned %v", pruned)
	}
	c.prune(db[len(db)-1], 1)
	if _, ok := c.Lookup("cccc0002"); ok {
		t.Fatal("prune kept too many")
	}
	if _, ok := c.Lookup("bbbb2222"); !ok {
		t.Fatal("prune removed the newest")
	}
	if _, err := c.Remove("zzzz"); status.Code(err) != codes.NotFound {
		t.Fatalf("rm unknown = %v", err)
	}
	if _, err := c.Remove("bb"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("rm short ref = %v", err)
	}
	removed, err := c.Remove("bbbb")
	if err != nil {
		t.Fatal(err)
	}
	// b's own step 3 tree goes (2 is the partial one); the base and step 1 stay for a.
	if len(removed) != 2 || c.HasStep(db[2]) || !c.HasStep(da[0]) || !c.HasStep(da[1]) {
		t.Fatalf("removed %v", removed)
	}
	if _, ok := c.Lookup("bbbb2222"); ok {
		t.Fatal("image still there")
	}
}

// fakeBase seeds cache with a base tree of host binaries, so the whole
// pipeline (chroot helper, steps, prefix reuse, assembly, mkfs.ext4) runs
// in a second without debootstrap or emulation.
func fakeBase(t *testing.T, root string) *Builder {
	t.Helper()
	c := OpenCache(root)
	d, _ := DebianArm64().StepDigests()
	tree := hostRoot(t)
	dst := filepath.Join(c.stepDir(d[0]), "rootfs")
	if err := copyTree(context.Background(), tree, dst); err != nil {
		t.Fatal(err)
	}
	bins := t.TempDir()
	os.WriteFile(filepath.Join(bins, "guest-agent"), []byte("#!/bin/sh\necho agent\n"), 0o755)
	os.WriteFile(filepath.Join(bins, "imageinit"), []byte("#!/bin/sh\necho init\n"), 0o755)
	return &Builder{CacheRoot: root, BinDir: bins, Mirror: &Mirror{Archive: "http://mirror.invalid/debian"},
		Kernel: func(context.Context, string, string) (*Kernel, error) { return nil, nil }}
}

// cacheListing is every path under the cache except tmp/ and logs/.
func cacheListing(t *testing.T, c Cache) []string {
	t.Helper()
	var out []string
	filepath.Walk(c.Dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(c.Dir, p)
		if strings.HasPrefix(rel, "tmp") || strings.HasPrefix(rel, "logs") || rel == "build.lock" {
			return nil
		}
		out = append(out, rel)
		return nil
	})
	sort.Strings(out)
	return out
}

func debugfsCat(t *testing.T, img, p string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "cat "+p, img).Output()
	if err != nil {
		t.Fatalf("debugfs cat %s: %v", p, err)
	}
	return string(out)
}

func TestBuilderPipeline(t *testing.T) {
	testcap.Root(t)
	testcap.Command(t, "mkfs.ext4")
	testcap.Command(t, "debugfs")
	if _, err := detectEmulation(bases[BaseDebianArm64]); err != nil {
		testcap.Missing(t, err.Error())
	}
	root := t.TempDir()
	b := fakeBase(t, root)
	var progress bytes.Buffer
	b.Progress = &progress
	ctx := context.Background()
	c := OpenCache(root)

	def := DebianArm64().RunCommands(`echo "built in $PWD home $HOME" > /hello`).Env(map[string]string{"APP_ENV": "demo"})
	res, err := b.Build(ctx, def)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	if res.Cached || res.FromStep != 0 {
		t.Fatalf("first build: cached=%v from=%d", res.Cached, res.FromStep)
	}
	if got := debugfsCat(t, res.Path, "/hello"); got != "built in / home /root\n" {
		t.Fatalf("/hello = %q", got)
	}
	if got := debugfsCat(t, res.Path, "/etc/sailbox/env"); !strings.HasSuffix(got, "\nAPP_ENV=demo\n") {
		t.Fatalf("env file = %q", got)
	}
	if got := debugfsCat(t, res.Path, "/usr/bin/guest-agent"); got != "#!/bin/sh\necho agent\n" {
		t.Fatalf("agent = %q", got)
	}
	var m Manifest
	if err := json.Unmarshal([]byte(debugfsCat(t, res.Path, "/etc/sailbox/image.json")), &m); err != nil {
		t.Fatal(err)
	}
	if want, _ := def.Digest(); m.Digest != want || m.ID != res.ID {
		t.Fatalf("manifest digest %s id %s", m.Digest, m.ID)
	}
	for _, want := range []string{"[1/2] run_commands (1)", "[2/2] env APP_ENV", "done in", "[assemble]", "built in"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, progress.String())
		}
	}
	if b, err := os.ReadFile(res.Log); err != nil || !strings.Contains(string(b), "+ chroot /bin/sh -c") {
		t.Errorf("build log %s: %v", res.Log, err)
	}
	if ents, _ := os.ReadDir(c.tmpDir()); len(ents) != 0 {
		t.Errorf("work left in %s: %v", c.tmpDir(), ents)
	}

	// Unchanged definition: a cache hit.
	again, err := b.Build(ctx, def)
	if err != nil || !again.Cached || again.Path != res.Path {
		t.Fatalf("rebuild: %+v, %v", again, err)
	}

	// A longer definition reuses the longest cached prefix (both steps).
	longer := def.RunCommands("test -f /hello && echo $APP_ENV > /seen")
	res2, err := b.Build(ctx, longer)
	if err != nil {
		t.Fatal(err)
	}
	if res2.FromStep != 2 {
		t.Fatalf("longer definition started after step %d, want 2", res2.FromStep)
	}
	if got := debugfsCat(t, res2.Path, "/seen"); got != "demo\n" {
		t.Fatalf("/seen = %q (env of earlier steps)", got)
	}

	// A build step copies its context and runs its commands in dest.
	ctxDir := t.TempDir()
	os.WriteFile(filepath.Join(ctxDir, "data.txt"), []byte("payload\n"), 0o600)
	os.Mkdir(filepath.Join(ctxDir, "sub"), 0o755)
	os.Symlink("../data.txt", filepath.Join(ctxDir, "sub", "link"))
	withCtx := def.Build(ctxDir, "/app", `read x < sub/link; echo "$x from $PWD" > out`)
	res3, err := b.Build(ctx, withCtx)
	if err != nil {
		t.Fatal(err)
	}
	if got := debugfsCat(t, res3.Path, "/app/out"); got != "payload from /app\n" {
		t.Fatalf("/app/out = %q", got)
	}
	// The context changed after the definition was made: refused (a cached
	// step of the old content would still be served, being that content).
	stale := def.Env(map[string]string{"X": "1"}).Build(ctxDir, "/app")
	os.WriteFile(filepath.Join(ctxDir, "data.txt"), []byte("other\n"), 0o600)
	if _, err := b.Build(ctx, def.Build(ctxDir, "/app2").RunCommands("true")); err != nil {
		t.Fatalf("fresh definition of the changed context: %v", err)
	}
	if _, err := b.Build(ctx, stale); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "changed since") {
		t.Fatalf("stale context: %v", err)
	}

	// A failing step names itself and its exit code; the cache is untouched.
	before := cacheListing(t, c)
	bad := def.RunCommands("true", "echo oops >&2; exit 3")
	_, err = b.Build(ctx, bad)
	if status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "step 3 (run_commands (2))") ||
		!strings.Contains(err.Error(), "exit code 3") || !strings.Contains(err.Error(), "build log: ") {
		t.Fatalf("failed build: %v", err)
	}
	if after := cacheListing(t, c); !reflect.DeepEqual(after, before) {
		t.Fatalf("a failed build changed the cache:\nbefore %v\nafter  %v", before, after)
	}
	if ents, _ := os.ReadDir(c.tmpDir()); len(ents) != 0 {
		t.Errorf("work left after a failure: %v", ents)
	}

	// The build timeout kills the step (and what it started) and cleans up.
	b.Timeout = time.Second
	slow := def.RunCommands("sleep 600 & sleep 600")
	t0 := time.Now()
	_, err = b.Build(ctx, slow)
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "step 3") {
		t.Fatalf("timed-out build: %v", err)
	}
	if time.Since(t0) > 30*time.Second {
		t.Fatalf("timeout took %s", time.Since(t0))
	}
	if after := cacheListing(t, c); !reflect.DeepEqual(after, before) {
		t.Fatalf("a timed-out build changed the cache")
	}
	if ents, _ := os.ReadDir(c.tmpDir()); len(ents) != 0 {
		t.Errorf("work left after a timeout: %v", ents)
	}
	if m := hostMountsUnder(t, root); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}

func TestRunImageCommand(t *testing.T) {
	testcap.Root(t)
	testcap.Command(t, "mkfs.ext4")
	if _, err := detectEmulation(bases[BaseDebianArm64]); err != nil {
		testcap.Missing(t, err.Error())
	}
	root := t.TempDir()
	b := fakeBase(t, root)
	t.Setenv("SAILBOX_GUEST_BIN", b.BinDir)
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := RunImageCommand(context.Background(), args, &out, &errb)
		return code, out.String(), errb.String()
	}
	dir := t.TempDir()
	def := filepath.Join(dir, "def.json")
	os.WriteFile(def, []byte(`{"base": "debian_arm64", "steps": [{"run_commands": ["echo hi > /hi"]}]}`), 0o644)

	// The CLI has no kernel hook (it uses the VM driver's kernel): build
	// through the Builder, then check the CLI's cache hit, ls and rm.
	im, err := LoadFile(def)
	if err != nil {
		t.Fatal(err)
	}
	res, err := b.Build(context.Background(), im)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs := run("build", "--cache-dir", root, def)
	if code != 0 || strings.TrimSpace(out) != res.Path || !strings.Contains(errs, "cached") {
		t.Fatalf("build: %d %q %q", code, out, errs)
	}
	code, out, _ = run("build", "--cache-dir", root, "--json", def)
	var j struct {
		Path   string `json:"path"`
		Cached bool   `json:"cached"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &j) != nil || j.Path != res.Path || !j.Cached {
		t.Fatalf("build --json: %d %q", code, out)
	}
	code, out, _ = run("ls", "--cache-dir", root)
	if code != 0 || !strings.Contains(out, short(res.ID)) || !strings.Contains(out, "debian_arm64") {
		t.Fatalf("ls: %d %q", code, out)
	}

	// Errors: "error: CODE: message", exit 125.
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"base": "debian_arm64", "steps": [{"apt_install": ["curl;reboot"]}]}`), 0o644)
	code, _, errs = run("build", "--cache-dir", root, filepath.Join(dir, "bad.json"))
	if code != 125 || !strings.HasPrefix(errs, "error: InvalidArgument: ") || !strings.Contains(errs, "step 1 (apt_install)") {
		t.Fatalf("bad definition: %d %q", code, errs)
	}
	code, _, errs = run("build", "--cache-dir", root, filepath.Join(dir, "missing.json"))
	if code != 125 || !strings.HasPrefix(errs, "error: NotFound: ") {
		t.Fatalf("missing file: %d %q", code, errs)
	}
	code, _, errs = run("rm", "--cache-dir", root, "ffffffff")
	if code != 125 || !strings.HasPrefix(errs, "error: NotFound: ") {
		t.Fatalf("rm unknown: %d %q", code, errs)
	}
	if code, _, errs = run("build", "--bogus", def); code != 125 || !strings.HasPrefix(errs, "error: InvalidArgument: ") {
		t.Fatalf("bad flag: %d %q", code, errs)
	}
	if code, _, _ = run("frob"); code != 125 {
		t.Fatalf("unknown subcommand: %d", code)
	}
	if code, _, _ = run(); code != 2 {
		t.Fatalf("no args: %d", code)
	}

	code, out, _ = run("rm", "--cache-dir", root, short(res.ID))
	if code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("rm: %d %q", code, out)
	}
	code, out, _ = run("ls", "--cache-dir", root, "--json")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("ls after rm: %d %q", code, out)
	}
}

func TestBuildWithoutGuestBinaries(t *testing.T) {
	bins := t.TempDir()
	b := &Builder{CacheRoot: t.TempDir(), BinDir: bins}
	_, err := b.Build(context.Background(), DebianArm64())
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), filepath.Join(bins, "guest-agent")) {
		t.Fatalf("no agent: %v", err)
	}
	os.WriteFile(filepath.Join(bins, "guest-agent"), []byte("x"), 0o755)
	_, err = b.Build(context.Background(), DebianArm64())
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "imageinit") || !strings.Contains(err.Error(), "make build") {
		t.Fatalf("no imageinit: %v", err)
	}
	// An invalid definition is refused before anything else.
	if _, err := b.Build(context.Background(), DebianArm64().AptInstall("")); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("invalid definition: %v", err)
	}
}

func TestCopyContextStaysInRoot(t *testing.T) {
	testcap.Root(t) // the copy chowns to root
	root := t.TempDir()
	outside := t.TempDir() // stands for the host's /etc
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	// The image links /app to an absolute path and /app/sub out of the tree.
	os.Symlink(outside, filepath.Join(root, "app"))
	os.Symlink("../../../../.."+outside, filepath.Join(root, "etc", "sub"))
	ctxDir := t.TempDir()
	os.WriteFile(filepath.Join(ctxDir, "f"), []byte("1"), 0o640)
	os.Mkdir(filepath.Join(ctxDir, "sub"), 0o750)
	os.WriteFile(filepath.Join(ctxDir, "sub", "g"), []byte("2"), 0o600)
	for _, dest := range []string{"/app", "/etc"} {
		if err := copyContext(ctxDir, root, dest); err != nil {
			t.Fatal(err)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("copy escaped the tree: %v in %s", ents, outside)
	}
	// /app -> <outside> resolves to <root><outside> inside the tree.
	for _, p := range []string{filepath.Join(outside, "f"), filepath.Join(outside, "sub", "g"), "etc/f"} {
		fi, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if p == "etc/f" && fi.Mode().Perm() != 0o640 {
			t.Errorf("%s mode %o", p, fi.Mode().Perm())
		}
	}
}
