package rootfs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sailbox/sailbox/internal/version"
	"github.com/sailbox/sailbox/rootfs/envfile"
)

// Build builds im (or finds it in the cache) and returns the image.
func (b *Builder) Build(ctx context.Context, im Image) (*Result, error) {
	started := time.Now()
	if err := im.Err(); err != nil {
		return nil, err
	}
	info := bases[im.base]
	digests, _ := im.StepDigests()
	digest := digests[len(digests)-1]
	binDir := b.BinDir
	if binDir == "" {
		binDir = FindBinDir(im.base)
	}
	agentPath, initPath, err := guestBinaries(binDir)
	if err != nil {
		return nil, err
	}
	agentSHA, err := fileSHA256(agentPath)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	initSHA, err := fileSHA256(initPath)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	id := imageID(digest, agentSHA, initSHA, info.KernelPkg)
	cache := OpenCache(b.CacheRoot)
	if res, ok := b.cached(cache, id, started); ok {
		return res, nil
	}

	timeout := b.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	unlock, err := lockFile(ctx, filepath.Join(cache.Dir, "build.lock"))
	if err != nil {
		return nil, timeoutStatus(ctx, timeout, err)
	}
	defer unlock()
	// Another process may have built it while we waited.
	if res, ok := b.cached(cache, id, started); ok {
		return res, nil
	}
	cleanStale(cache.tmpDir())

	bd := &build{
		Builder: b, im: im, info: info, cache: cache, digests: digests, id: id,
		agentPath: agentPath, initPath: initPath, agentSHA: agentSHA, initSHA: initSHA,
		started: started, timeout: timeout,
	}
	res, err := bd.run(ctx)
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (b *Builder) cached(cache Cache, id string, started time.Time) (*Result, bool) {
	m, ok := cache.Lookup(id)
	if !ok {
		return nil, false
	}
	dir := cache.imageDir(id)
	res := &Result{Manifest: m, Path: filepath.Join(dir, "rootfs.ext4"), Dir: dir, Log: filepath.Join(dir, "build.log"),
		Cached: true, FromStep: len(m.Steps), Elapsed: time.Since(started)}
	if _, err := os.Stat(filepath.Join(dir, "vmlinuz")); err == nil {
		res.KernelImage = filepath.Join(dir, "vmlinuz")
	}
	if b.Progress != nil {
		fmt.Fprintf(b.Progress, "image %s: cached (%s)\n", short(id), res.Path)
	}
	return res, true
}

func timeoutStatus(ctx context.Context, timeout time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return status.Errorf(codes.DeadlineExceeded, "image build timed out after %s: %v", timeout, err)
	}
	if ctx.Err() != nil {
		return status.Errorf(codes.Canceled, "image build cancelled: %v", err)
	}
	return err
}

// build is one run of the builder.
type build struct {
	*Builder
	im                Image
	info              baseInfo
	cache             Cache
	digests           []string
	id                string
	agentPath         string
	initPath          string
	agentSHA, initSHA string
	started           time.Time
	timeout           time.Duration
	work, tree        string
	log               *os.File
	emu               emulation
	mirror            Mirror
	staged            []string // step digests snapshotted in work/steps
	emuFiles          []string // interpreter copies in the tree (removed at the end)
	progMu            sync.Mutex
	stepName          string
	stepStart         time.Time
	tty               bool
}

func (bd *build) run(ctx context.Context) (res *Result, err error) {
	if err := os.MkdirAll(bd.cache.tmpDir(), 0o755); err != nil {
		return nil, status.Errorf(codes.Internal, "image cache %s: %v", bd.cache.Dir, err)
	}
	bd.work, err = os.MkdirTemp(bd.cache.tmpDir(), "build-")
	if err != nil {
		return nil, status.Errorf(codes.Internal, "image cache %s: %v", bd.cache.Dir, err)
	}
	bd.tree = filepath.Join(bd.work, "rootfs")
	bd.log, err = os.Create(filepath.Join(bd.work, "build.log"))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "build log: %v", err)
	}
	stopTicker := bd.startTicker()
	defer func() {
		stopTicker()
		if err != nil {
			err = timeoutStatus(ctx, bd.timeout, err)
			bd.logf("FAILED after %s: %v\n", since(bd.started), err)
			saved := bd.saveFailedLog()
			if saved != "" {
				if s, ok := status.FromError(err); ok {
					err = status.Errorf(s.Code(), "%s (build log: %s)", s.Message(), saved)
				}
			}
			res = nil
		}
		bd.log.Close()
		removeTree(bd.work)
	}()

	digest := bd.digests[len(bd.digests)-1]
	steps := bd.im.steps
	bd.progressf("image %s: %s, %d steps, id %s\n", short(digest), bd.im.base, len(steps), short(bd.id))
	if bd.emu, err = detectEmulation(bd.info); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}
	if bd.Mirror != nil {
		bd.mirror = *bd.Mirror
	} else if bd.mirror, err = HostMirror(bd.info.Suite); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%v", err)
	}

	from := bd.cache.LongestPrefix(bd.digests)
	if from >= 0 {
		bd.progressf("[%d/%d] reusing cached tree after %s\n", from, len(steps), stepLabel(bd.im, from))
		if err := copyTree(ctx, bd.cache.stepDir(bd.digests[from])+"/rootfs", bd.tree); err != nil {
			return nil, status.Errorf(codes.Internal, "restore cached step %s: %v", short(bd.digests[from]), err)
		}
	} else {
		if err := bd.step(ctx, 0, func() error { return bd.bootstrap(ctx) }); err != nil {
			return nil, err
		}
		from = 0
	}
	if err := bd.prepareEmulation(); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	for i := from + 1; i <= len(steps); i++ {
		if err := bd.step(ctx, i, func() error { return bd.runStep(ctx, i) }); err != nil {
			return nil, err
		}
	}

	bd.setStep("assemble")
	bd.progressf("[assemble] agent, init, kernel modules, manifest, mkfs.ext4\n")
	out := filepath.Join(bd.work, "out")
	m, err := bd.assemble(ctx, out)
	if err != nil {
		return nil, err
	}
	// Commit: step trees first (they are reusable on their own), then the
	// image. Each is a rename of a complete directory.
	for _, d := range bd.staged {
		dst := bd.cache.stepDir(d)
		if bd.cache.HasStep(d) {
			continue
		}
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.Rename(filepath.Join(bd.work, "steps", d), dst); err != nil {
			return nil, status.Errorf(codes.Internal, "cache step %s: %v", short(d), err)
		}
	}
	total := since(bd.started)
	bd.progressf("image %s built in %s\n", short(bd.id), total)
	bd.log.Sync()
	if err := copyFile(bd.log.Name(), filepath.Join(out, "build.log"), 0o644); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	dst := bd.cache.imageDir(bd.id)
	os.MkdirAll(filepath.Dir(dst), 0o755)
	os.RemoveAll(dst) // a half-removed entry without its manifest
	if err := os.Rename(out, dst); err != nil {
		return nil, status.Errorf(codes.Internal, "cache image %s: %v", short(bd.id), err)
	}
	for _, d := range bd.cache.prune(m.Digest, keepPerDigest) {
		bd.logf("pruned older image of the same definition: %s\n", d)
	}
	res = &Result{Manifest: m, Path: filepath.Join(dst, "rootfs.ext4"), Dir: dst, Log: filepath.Join(dst, "build.log"),
		FromStep: from, Elapsed: time.Since(bd.started)}
	if _, err := os.Stat(filepath.Join(dst, "vmlinuz")); err == nil {
		res.KernelImage = filepath.Join(dst, "vmlinuz")
	}
	return res, nil
}

// step runs step i (0 = the base) with progress, then snapshots the tree.
func (bd *build) step(ctx context.Context, i int, fn func() error) error {
	label := stepLabel(bd.im, i)
	bd.setStep(fmt.Sprintf("[%d/%d] %s", i, len(bd.im.steps), label))
	t0 := time.Now()
	bd.progressf("[%d/%d] %s\n", i, len(bd.im.steps), label)
	if err := fn(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("step %d (%s) interrupted after %s: %w", i, label, since(t0), ctx.Err())
		}
		var ee *exitError
		if errors.As(err, &ee) {
			return status.Errorf(codes.Aborted, "step %d (%s) failed: %s", i, label, ee.Error())
		}
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Errorf(codes.Aborted, "step %d (%s) failed: %v", i, label, err)
	}
	snap := filepath.Join(bd.work, "steps", bd.digests[i])
	if err := copyTree(ctx, bd.tree, filepath.Join(snap, "rootfs")); err != nil {
		return fmt.Errorf("snapshot after step %d: %w", i, err)
	}
	meta, _ := json.MarshalIndent(map[string]any{"index": i, "label": label, "digest": bd.digests[i], "built_at": time.Now().UTC()}, "", "  ")
	os.WriteFile(filepath.Join(snap, "step.json"), meta, 0o644)
	bd.staged = append(bd.staged, bd.digests[i])
	bd.progressf("[%d/%d] %s: done in %s (total %s)\n", i, len(bd.im.steps), label, since(t0), since(bd.started))
	return nil
}

func stepLabel(im Image, i int) string {
	if i == 0 {
		info := bases[im.base]
		return fmt.Sprintf("base %s (debootstrap %s %s)", im.base, info.Suite, info.DebArch)
	}
	return im.steps[i-1].Describe()
}

// bootstrap makes the base: debootstrap's first stage on the host, its
// second stage in the chroot under emulation, then apt configuration.
func (bd *build) bootstrap(ctx context.Context) error {
	argv := []string{"debootstrap", "--variant=minbase", "--arch=" + bd.info.DebArch, "--foreign", bd.info.Suite, bd.tree, bd.mirror.Archive}
	if err := bd.hostCommand(ctx, argv); err != nil {
		return err
	}
	if err := bd.prepareEmulation(); err != nil {
		return err
	}
	env := baseEnv()
	if bd.emu.UserNS {
		// debootstrap probes mknod, which a user namespace forbids; as in an
		// LXC container it then uses the nodes its first stage made.
		env = append(env, "container=lxc")
	}
	if err := bd.chroot(ctx, []string{"/debootstrap/debootstrap", "--second-stage"}, "/", env); err != nil {
		if b, rerr := os.ReadFile(filepath.Join(bd.tree, "debootstrap", "debootstrap.log")); rerr == nil {
			bd.logf("--- debootstrap.log ---\n%s\n", tail(b, 8192))
		}
		return err
	}
	files := map[string]string{
		"/etc/apt/sources.list":          bd.mirror.sourcesList(bd.info.Suite),
		"/etc/apt/apt.conf.d/90sailbox":  "APT::Install-Recommends \"false\";\nAcquire::Languages \"none\";\n",
		"/etc/dpkg/dpkg.cfg.d/90sailbox": "force-unsafe-io\n",
		"/etc/hostname":                  "sailbox\n",
		"/etc/hosts":                     "127.0.0.1\tlocalhost\n127.0.1.1\tsailbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"/etc/sailbox/env":               mustFormatEnv(nil),
	}
	for p, content := range files {
		if err := writeInRoot(bd.tree, p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// prepareEmulation puts what the chroot needs to run foreign binaries in
// place: the interpreter at /usr/bin (and at the host entry's path when
// that entry opens it lazily), and a policy-rc.d so no daemon starts.
func (bd *build) prepareEmulation() error {
	bd.emuFiles = nil
	if err := writeInRoot(bd.tree, "/usr/sbin/policy-rc.d", []byte("#!/bin/sh\n# sailbox image build: start no services\nexit 101\n"), 0o755); err != nil {
		return err
	}
	if bd.emu.Native {
		return nil
	}
	targets := []string{"/usr/bin/" + filepath.Base(bd.emu.Interp)}
	if bd.emu.System != "" && !bd.emu.SystemFixed {
		targets = append(targets, bd.emu.SystemInterp)
	}
	for _, t := range targets {
		dst, err := resolveInRoot(bd.tree, t, false)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		src := bd.emu.Interp
		if t == bd.emu.SystemInterp {
			src = t
		}
		if err := copyFile(src, dst, 0o755); err != nil {
			return err
		}
		bd.emuFiles = append(bd.emuFiles, t)
	}
	return nil
}

// stepCmd is one command of a step, run in the chroot.
type stepCmd struct {
	Argv []string
	Dir  string
}

// stepCommands is what step s runs inside the tree (env steps run nothing).
// apt and pip get argv, never a shell; run_commands and build commands are
// shell commands by definition and run as /bin/sh -c CMD.
func stepCommands(s Step, tree string) []stepCmd {
	var out []stepCmd
	apt := func(pkgs ...string) {
		if !hasAptLists(tree) {
			out = append(out, stepCmd{Argv: []string{"apt-get", "-q", "update"}, Dir: "/"})
		}
		out = append(out, stepCmd{Argv: append([]string{"apt-get", "-q", "-y", "--no-install-recommends", "install"}, pkgs...), Dir: "/"})
	}
	switch s.Kind {
	case KindAptInstall:
		apt(s.Packages...)
	case KindPipInstall:
		if !hasPip(tree) {
			apt("python3", "python3-pip", "python3-venv")
		}
		out = append(out, stepCmd{Argv: append([]string{"python3", "-m", "pip", "install", "--no-cache-dir",
			"--break-system-packages", "--root-user-action=ignore", "--"}, s.Packages...), Dir: "/"})
	case KindRunCommands:
		for _, c := range s.Commands {
			out = append(out, stepCmd{Argv: []string{"/bin/sh", "-c", c}, Dir: "/"})
		}
	case KindBuild:
		for _, c := range s.Commands {
			out = append(out, stepCmd{Argv: []string{"/bin/sh", "-c", c}, Dir: s.Dest})
		}
	}
	return out
}

func hasAptLists(tree string) bool {
	m, _ := filepath.Glob(filepath.Join(tree, "var/lib/apt/lists/*_Packages*"))
	return len(m) > 0
}

func hasPip(tree string) bool {
	_, err := os.Stat(filepath.Join(tree, "usr/lib/python3/dist-packages/pip"))
	return err == nil
}

// baseEnv is the environment of every step before the image's own.
func baseEnv() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive",
	}
}

// imageEnv merges the env steps among the first n steps.
func imageEnv(steps []Step, n int) map[string]string {
	env := map[string]string{}
	for _, s := range steps[:n] {
		if s.Kind == KindEnv {
			for k, v := range s.Env {
				env[k] = v
			}
		}
	}
	return env
}

// stepEnv is the environment of step i (1-based): base, then the image's
// variables set by earlier env steps.
func stepEnv(steps []Step, i int) []string {
	env := baseEnv()
	vars := imageEnv(steps, i-1)
	for _, v := range sortedVars(vars) {
		env = append(env, v)
	}
	return env
}

func sortedVars(m map[string]string) []string {
	b, _ := envfile.Format(m)
	vars, _ := envfile.Parse(strings.NewReader(string(b)))
	return envfile.Environ(vars)
}

func mustFormatEnv(m map[string]string) string {
	b, err := envfile.Format(m)
	if err != nil {
		panic(err) // keys and values were validated with the step
	}
	return string(b)
}

// runStep runs definition step i (1-based).
func (bd *build) runStep(ctx context.Context, i int) error {
	s := bd.im.steps[i-1]
	switch s.Kind {
	case KindEnv:
		return writeInRoot(bd.tree, envfile.Path, []byte(mustFormatEnv(imageEnv(bd.im.steps, i))), 0o644)
	case KindBuild:
		d, err := contextDigest(s.Context)
		if err != nil {
			return status.Errorf(codes.FailedPrecondition, "step %d (build): context %s: %v", i, s.Context, err)
		}
		if d != s.ContextDigest {
			return status.Errorf(codes.FailedPrecondition, "step %d (build): context %s changed since the definition was made (digest %s, now %s)", i, s.Context, short(s.ContextDigest), short(d))
		}
		if err := copyContext(s.Context, bd.tree, s.Dest); err != nil {
			return fmt.Errorf("copy context %s to %s: %w", s.Context, s.Dest, err)
		}
	}
	env := stepEnv(bd.im.steps, i)
	for _, c := range stepCommands(s, bd.tree) {
		if err := bd.chroot(ctx, c.Argv, c.Dir, env); err != nil {
			return err
		}
	}
	return nil
}

// chroot runs argv in the tree through the helper.
func (bd *build) chroot(ctx context.Context, argv []string, dir string, env []string) error {
	if err := bd.copyResolvConf(); err != nil {
		return err
	}
	spec := chrootSpec{Root: bd.tree, Argv: argv, Env: env, Dir: dir, Mounts: chrootMounts(), UserNS: bd.emu.UserNS}
	if bd.emu.UserNS {
		mp := filepath.Join(bd.work, "binfmt")
		os.MkdirAll(mp, 0o755)
		spec.Binfmt = &binfmtReg{MountDir: mp, Register: registerLine(bd.info, bd.emu.Interp)}
	}
	bd.logf("+ chroot %s\n", shellQuote(argv))
	_, err := runChroot(ctx, spec, bd.log, nil)
	return err
}

// copyResolvConf gives the chroot the host's resolver (steps share the
// host's network).
func (bd *build) copyResolvConf() error {
	src, err := filepath.EvalSymlinks("/etc/resolv.conf")
	if err != nil {
		return nil // no resolver: apt will say so
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return nil
	}
	return writeInRoot(bd.tree, "/etc/resolv.conf", b, 0o644)
}

// hostCommand runs argv on the host in its own process group, killed as a
// group when ctx ends.
func (bd *build) hostCommand(ctx context.Context, argv []string) error {
	bd.logf("+ %s\n", shellQuote(argv))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = bd.log, bd.log
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	// Pdeathsig follows the forking thread: keep it for the command's life.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		ws := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			return &exitError{Argv: argv, Code: 128 + int(ws.Signal()), Signal: int(ws.Signal())}
		}
		return &exitError{Argv: argv, Code: ws.ExitStatus()}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", argv[0], err)
	}
	return nil
}

// assemble turns the tree into the image in out/.
func (bd *build) assemble(ctx context.Context, out string) (Manifest, error) {
	fail := func(format string, a ...any) (Manifest, error) {
		return Manifest{}, status.Errorf(codes.Internal, "assemble image: "+format, a...)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fail("%v", err)
	}
	// Build-only things out.
	for _, p := range append(bd.emuFiles, "/usr/sbin/policy-rc.d", "/etc/resolv.conf", "/etc/dpkg/dpkg.cfg.d/90sailbox") {
		if rp, err := resolveInRoot(bd.tree, p, false); err == nil {
			os.Remove(rp)
		}
	}
	for _, g := range []string{"var/lib/apt/lists/*_*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb"} {
		m, _ := filepath.Glob(filepath.Join(bd.tree, g))
		for _, p := range m {
			os.Remove(p)
		}
	}
	os.RemoveAll(filepath.Join(bd.tree, "debootstrap"))

	// The guest's own binaries.
	for _, f := range []struct{ src, dst string }{{bd.agentPath, GuestAgentPath}, {bd.initPath, InitPath}} {
		dst, err := resolveInRoot(bd.tree, f.dst, false)
		if err != nil {
			return fail("%v", err)
		}
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := copyFile(f.src, dst, 0o755); err != nil {
			return fail("%v", err)
		}
	}
	os.Remove(filepath.Join(bd.tree, "init"))
	if err := os.Symlink(strings.TrimPrefix(InitPath, "/"), filepath.Join(bd.tree, "init")); err != nil {
		return fail("%v", err)
	}

	m := Manifest{
		ID: bd.id, Digest: bd.digests[len(bd.digests)-1], Base: bd.im.base, Suite: bd.info.Suite, Arch: bd.info.DebArch,
		Steps: bd.im.Steps(), StepDigests: bd.digests,
		Agent:   Binary{Path: GuestAgentPath, SHA256: bd.agentSHA, Version: bd.agentVersion(ctx)},
		Init:    Binary{Path: InitPath, SHA256: bd.initSHA, Version: binaryVersion(bd.initPath)},
		EnvFile: envfile.Path, Mirror: bd.mirror.Archive, Builder: version.Version, BuiltAt: time.Now().UTC(),
	}

	// Kernel modules of the VM's kernel, and the kernel itself beside the image.
	kf := bd.Kernel
	if kf == nil {
		kf = defaultKernel
	}
	root := bd.CacheRoot
	if root == "" {
		root = DefaultCacheRoot()
	}
	k, err := kf(ctx, root, bd.info.DebArch)
	if err != nil {
		return Manifest{}, status.Errorf(codes.Unavailable, "VM kernel for the image's modules: %v", err)
	}
	if k != nil {
		mods, err := k.Modules()
		if err != nil {
			return fail("kernel modules: %v", err)
		}
		ref := &KernelRef{Package: k.Package, Version: k.Version, Release: k.Release, Modules: ModulesList}
		var list strings.Builder
		list.WriteString("# kernel modules for " + k.Release + " in load order (dependencies first); read by imageinit\n")
		for _, rel := range mods {
			guest := path.Join("/lib/modules", k.Release, filepath.ToSlash(rel))
			dst, err := resolveInRoot(bd.tree, guest, false)
			if err != nil {
				return fail("%v", err)
			}
			os.MkdirAll(filepath.Dir(dst), 0o755)
			if err := copyFile(filepath.Join(k.ModDir, rel), dst, 0o644); err != nil {
				return fail("%v", err)
			}
			list.WriteString(guest + "\n")
			ref.Loaded = append(ref.Loaded, guest)
		}
		if err := writeInRoot(bd.tree, ModulesList, []byte(list.String()), 0o644); err != nil {
			return fail("%v", err)
		}
		m.Kernel = ref
		if err := os.Link(k.Image, filepath.Join(out, "vmlinuz")); err != nil {
			if err := copyFile(k.Image, filepath.Join(out, "vmlinuz"), 0o644); err != nil {
				return fail("%v", err)
			}
		}
	}

	if err := writeInRoot(bd.tree, envfile.Path, []byte(mustFormatEnv(imageEnv(bd.im.steps, len(bd.im.steps)))), 0o644); err != nil {
		return fail("%v", err)
	}
	m.BuildSecs = time.Since(bd.started).Seconds()
	mj, _ := json.MarshalIndent(m, "", "  ")
	mj = append(mj, '\n')
	if err := writeInRoot(bd.tree, ManifestPath, mj, 0o644); err != nil {
		return fail("%v", err)
	}
	if err := os.WriteFile(filepath.Join(out, "image.json"), mj, 0o644); err != nil {
		return fail("%v", err)
	}
	img := filepath.Join(out, "rootfs.ext4")
	if err := bd.mkfs(ctx, img); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// agentVersion asks the agent (guest-agent --version, under qemu-user
// when foreign; a static binary needs no chroot), falling back to its Go
// build info. imageinit is never run on the host: it is a PID 1.
func (bd *build) agentVersion(ctx context.Context) string {
	argv := []string{bd.agentPath, "--version"}
	if !bd.emu.Native {
		argv = append([]string{bd.emu.Interp}, argv...)
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if v, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n"); err == nil && v != "" && len(v) < 200 {
		return v
	}
	return binaryVersion(bd.agentPath)
}

// mkfs writes the tree into a new ext4 file sized from its content plus a
// margin, with mkfs.ext4 -d (no loop mount).
func (bd *build) mkfs(ctx context.Context, img string) error {
	used, inodes, err := treeUsage(bd.tree)
	if err != nil {
		return status.Errorf(codes.Internal, "size %s: %v", bd.tree, err)
	}
	margin := bd.MarginMiB
	if margin <= 0 {
		margin = 256
	}
	size := sizeFor(used, inodes, margin)
	argv := mkfsArgv(bd.tree, img, size, inodes)
	bd.progressf("[assemble] content %d MiB, %d inodes -> image %d MiB\n", used>>20, inodes, size>>20)
	if err := bd.hostCommand(ctx, argv); err != nil {
		return status.Errorf(codes.Internal, "mkfs.ext4: %v", err)
	}
	return nil
}

// sizeFor is the image size for content of used bytes in inodes files:
// 10% for metadata and fragmentation, the inode tables, the journal and
// the free margin, rounded up to 4 MiB.
func sizeFor(used, inodes int64, marginMiB int64) int64 {
	n := inodeCount(inodes)
	size := used + used/10 + n*256 + 64<<20 + marginMiB<<20
	const round = 4 << 20
	return (size + round - 1) / round * round
}

// inodeCount leaves room for as many new files again (at least 32k).
func inodeCount(inodes int64) int64 {
	return max(2*inodes, inodes+32768)
}

func mkfsArgv(tree, img string, size, inodes int64) []string {
	return []string{"mkfs.ext4", "-q", "-F", "-L", "sailbox-root", "-m", "0", "-N", fmt.Sprint(inodeCount(inodes)),
		"-E", "root_owner=0:0", "-d", tree, img, fmt.Sprintf("%dk", size>>10)}
}

// treeUsage sums the blocks the tree's files take (4 KiB granularity) and
// counts its inodes.
func treeUsage(root string) (used, inodes int64, err error) {
	seen := map[uint64]bool{}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Nlink > 1 && !d.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		inodes++
		switch {
		case d.IsDir():
			used += 4096
		case fi.Mode().IsRegular():
			used += (fi.Size() + 4095) / 4096 * 4096
		case fi.Mode()&fs.ModeSymlink != 0 && fi.Size() >= 60:
			used += 4096
		}
		return nil
	})
	return used, inodes, err
}

// copyTree copies a tree with everything kept (owners, modes, links,
// devices, xattrs); cp does this faster and more completely than a walk.
func copyTree(ctx context.Context, src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "cp", "-a", "--reflink=auto", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", src, dst, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// removeTree deletes a build's work directory, unless something is mounted
// under it (never possible by design: the mounts live in the helper's
// namespace), in which case deleting would reach into /dev or /sys.
func removeTree(dir string) {
	if mountedUnder(dir) {
		fmt.Fprintf(os.Stderr, "rootfs: not removing %s: something is mounted under it\n", dir)
		return
	}
	os.RemoveAll(dir)
}

func mountedUnder(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return true
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			return true
		}
	}
	return false
}

// cleanStale removes work directories of builds that died (the caller
// holds the build lock, so none is running).
func cleanStale(tmp string) {
	ents, _ := os.ReadDir(tmp)
	for _, e := range ents {
		removeTree(filepath.Join(tmp, e.Name()))
	}
}

// lockFile takes an exclusive flock, polling so ctx can end the wait.
func lockFile(ctx context.Context, p string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for another build (lock %s): %w", p, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (bd *build) saveFailedLog() string {
	bd.log.Sync()
	if err := os.MkdirAll(bd.cache.logDir(), 0o755); err != nil {
		return ""
	}
	p := filepath.Join(bd.cache.logDir(), fmt.Sprintf("failed-%s-%s.log", short(bd.digests[len(bd.digests)-1]), time.Now().UTC().Format("20060102T150405")))
	if err := copyFile(bd.log.Name(), p, 0o644); err != nil {
		return ""
	}
	return p
}

// Progress: step lines on Progress (and in the log); on a terminal a
// ticking status line with the running step's elapsed time, elsewhere a
// line every 30 s.

func (bd *build) progressf(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	bd.logf("==> %s", msg)
	if bd.Progress == nil {
		return
	}
	bd.progMu.Lock()
	defer bd.progMu.Unlock()
	if bd.tty {
		fmt.Fprint(bd.Progress, "\r\033[K")
	}
	fmt.Fprintf(bd.Progress, "%s %s", clock(since(bd.started)), msg)
}

func (bd *build) logf(format string, a ...any) {
	if bd.log != nil {
		fmt.Fprintf(bd.log, format, a...)
	}
}

func (bd *build) setStep(name string) {
	bd.progMu.Lock()
	bd.stepName, bd.stepStart = name, time.Now()
	bd.progMu.Unlock()
}

func (bd *build) startTicker() func() {
	if bd.Progress == nil {
		return func() {}
	}
	if f, ok := bd.Progress.(*os.File); ok {
		_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
		bd.tty = err == nil
	}
	every := 30 * time.Second
	if bd.tty {
		every = time.Second
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				bd.progMu.Lock()
				if bd.stepName != "" {
					if bd.tty {
						fmt.Fprintf(bd.Progress, "\r\033[K%s %s ... %s", clock(since(bd.started)), bd.stepName, since(bd.stepStart))
					} else {
						fmt.Fprintf(bd.Progress, "%s %s ... still running (%s)\n", clock(since(bd.started)), bd.stepName, since(bd.stepStart))
					}
				}
				bd.progMu.Unlock()
			}
		}
	}()
	return func() {
		close(done)
		if bd.tty {
			bd.progMu.Lock()
			fmt.Fprint(bd.Progress, "\r\033[K")
			bd.progMu.Unlock()
		}
	}
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }

func clock(d time.Duration) string {
	s := int(d.Seconds())
	return fmt.Sprintf("[%02d:%02d]", s/60, s%60)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
