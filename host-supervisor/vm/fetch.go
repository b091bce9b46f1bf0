package vm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// CacheDir is where downloads live: $SAILBOX_CACHE or ~/.cache/sailbox.
func CacheDir() string {
	if d := os.Getenv("SAILBOX_CACHE"); d != "" {
		return d
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "sailbox")
	}
	return filepath.Join(os.TempDir(), "sailbox-cache")
}

// Kernel is an extracted Debian arm64 kernel package.
type Kernel struct {
	Package string // e.g. linux-image-6.1.0-56-arm64
	Version string // Debian version, e.g. 6.1.192-2
	Release string // uname -r, e.g. 6.1.0-56-arm64
	Image   string // uncompressed arm64 Image, for -kernel
	ModDir  string // lib/modules/<Release>
}

// Fetcher downloads arm64 Debian packages with a private APT configuration
// (APT::Architecture "arm64") so the host's dpkg architectures stay as they
// are. Extracted packages are cached by name and version.
type Fetcher struct {
	Cache  string // default CacheDir()
	Logger *slog.Logger
	// IndexMaxAge is how old the private arm64 package index may get before
	// it is refreshed (default 24h). A failed refresh falls back to the
	// existing index, so a warm cache works offline.
	IndexMaxAge time.Duration
}

func (f *Fetcher) cache() string {
	if f.Cache != "" {
		return f.Cache
	}
	return CacheDir()
}

func (f *Fetcher) log() *slog.Logger {
	if f.Logger != nil {
		return f.Logger
	}
	return slog.Default()
}

func (f *Fetcher) aptDir() string { return filepath.Join(f.cache(), "apt-arm64") }

// lock serialises fetches of concurrent test processes on one cache.
func (f *Fetcher) lock() (func(), error) {
	if err := os.MkdirAll(f.cache(), 0o755); err != nil {
		return nil, err
	}
	p := filepath.Join(f.cache(), "vm-fetch.lock")
	fd, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	if err := syscall.Flock(int(fd.Fd()), syscall.LOCK_EX); err != nil {
		fd.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return func() { fd.Close() }, nil
}

// aptConfig writes the private APT configuration and returns its path. It
// reuses the system's sources (their URIs and keys are architecture-free)
// but keeps lists, archives and the dpkg status in the cache.
func (f *Fetcher) aptConfig() (string, error) {
	d := f.aptDir()
	for _, sub := range []string{"lists/partial", "archives/partial"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return "", err
		}
	}
	status := filepath.Join(d, "status")
	if _, err := os.Stat(status); err != nil {
		if err := os.WriteFile(status, nil, 0o644); err != nil {
			return "", err
		}
	}
	conf := fmt.Sprintf(`APT::Architecture "arm64";
APT::Architectures { "arm64"; };
Dir::State "%[1]s";
Dir::State::Lists "%[1]s/lists";
Dir::State::status "%[1]s/status";
Dir::Cache "%[1]s";
Dir::Cache::Archives "%[1]s/archives";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Debug::NoLocking "1";
Acquire::Languages "none";
`, d)
	p := filepath.Join(d, "apt.conf")
	old, _ := os.ReadFile(p)
	if !bytes.Equal(old, []byte(conf)) {
		if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
			return "", err
		}
	}
	return p, nil
}

func (f *Fetcher) apt(ctx context.Context, conf, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "APT_CONFIG="+conf, "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// updateIndex refreshes the arm64 index when it is missing or stale.
func (f *Fetcher) updateIndex(ctx context.Context, conf string) error {
	maxAge := f.IndexMaxAge
	if maxAge <= 0 {
		maxAge = 24 * time.Hour
	}
	stamp := filepath.Join(f.aptDir(), "updated")
	fi, err := os.Stat(stamp)
	if err == nil && time.Since(fi.ModTime()) < maxAge {
		return nil
	}
	f.log().Info("vm: refreshing the arm64 package index", "dir", f.aptDir())
	if _, uerr := f.apt(ctx, conf, "", "apt-get", "update", "-qq"); uerr != nil {
		if err == nil { // an older index exists: use it
			f.log().Warn("vm: arm64 index refresh failed; using the old index", "err", uerr)
			return nil
		}
		return uerr
	}
	return os.WriteFile(stamp, nil, 0o644)
}

var dependsRE = regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-[0-9][^\s]*-arm64)\s*$`)

// candidate returns the version apt would pick for pkg.
func (f *Fetcher) candidate(ctx context.Context, conf, pkg string) (string, error) {
	out, err := f.apt(ctx, conf, "", "apt-cache", "policy", pkg)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Candidate:"); ok {
			v = strings.TrimSpace(v)
			if v == "" || v == "(none)" {
				break
			}
			return v, nil
		}
	}
	return "", fmt.Errorf("package %s (arm64): no candidate version in the index", pkg)
}

// extracted downloads pkg=version and unpacks it (dpkg-deb -x) into
// cache/debs/<pkg>_<version>, once.
func (f *Fetcher) extracted(ctx context.Context, conf, pkg, version string) (string, error) {
	dst := filepath.Join(f.cache(), "debs", pkg+"_"+strings.ReplaceAll(version, ":", "%3a"))
	if _, err := os.Stat(filepath.Join(dst, ".done")); err == nil {
		return dst, nil
	}
	dl := filepath.Join(f.aptDir(), "download")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", err
	}
	f.log().Info("vm: downloading", "package", pkg, "version", version)
	if _, err := f.apt(ctx, conf, dl, "apt-get", "download", "-qq", pkg+"="+version); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*_arm64.deb"))
	if len(debs) == 0 {
		return "", fmt.Errorf("package %s=%s: apt-get download left no .deb in %s", pkg, version, dl)
	}
	tmp := dst + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], tmp).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb -x %s: %w: %s", debs[0], err, out)
	}
	for _, d := range debs {
		os.Remove(d)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".done"), []byte(pkg+" "+version+"\n"), 0o644); err != nil {
		return "", err
	}
	os.RemoveAll(dst)
	if err := os.Rename(tmp, dst); err != nil {
		return "", err
	}
	return dst, nil
}

// newest returns the last cached extraction of pkgPrefix*, for offline use.
func (f *Fetcher) newest(pkgPrefix string) (string, error) {
	m, _ := filepath.Glob(filepath.Join(f.cache(), "debs", pkgPrefix+"*", ".done"))
	var best string
	var bestT time.Time
	for _, p := range m {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().After(bestT) {
			best, bestT = filepath.Dir(p), fi.ModTime()
		}
	}
	if best == "" {
		return "", fmt.Errorf("no cached %s* in %s", pkgPrefix, filepath.Join(f.cache(), "debs"))
	}
	return best, nil
}

// Kernel returns the current Debian arm64 generic kernel (the one
// linux-image-arm64 depends on), downloading it on first use.
func (f *Fetcher) Kernel(ctx context.Context) (Kernel, error) {
	unlock, err := f.lock()
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()
	dir, err := f.memo(ctx, "kernel", f.resolveKernel)
	if err != nil {
		if cached, cerr := f.newest("linux-image-"); cerr == nil {
			f.log().Warn("vm: using a cached kernel", "dir", cached, "err", err)
			dir = cached
		} else {
			return Kernel{}, err
		}
	}
	return kernelIn(dir)
}

// memo resolves and extracts a package once per index refresh: the
// answer is kept in apt-arm64/resolved/KEY and trusted while it is newer
// than the index, which saves the apt-cache calls on every boot.
func (f *Fetcher) memo(ctx context.Context, key string, resolve func(ctx context.Context, conf string) (string, error)) (string, error) {
	conf, err := f.aptConfig()
	if err != nil {
		return "", err
	}
	if err := f.updateIndex(ctx, conf); err != nil {
		return "", err
	}
	p := filepath.Join(f.aptDir(), "resolved", key)
	stamp, serr := os.Stat(filepath.Join(f.aptDir(), "updated"))
	if fi, err := os.Stat(p); err == nil && serr == nil && !fi.ModTime().Before(stamp.ModTime()) {
		if b, err := os.ReadFile(p); err == nil {
			if _, err := os.Stat(filepath.Join(string(b), ".done")); err == nil {
				return string(b), nil
			}
		}
	}
	dir, err := resolve(ctx, conf)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
		os.WriteFile(p, []byte(dir), 0o644)
	}
	return dir, nil
}

func (f *Fetcher) resolveKernel(ctx context.Context, conf string) (string, error) {
	out, err := f.apt(ctx, conf, "", "apt-cache", "depends", "linux-image-arm64")
	if err != nil {
		return "", err
	}
	m := dependsRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("linux-image-arm64: no linux-image-*-arm64 dependency in %q", out)
	}
	pkg := string(m[1])
	ver, err := f.candidate(ctx, conf, pkg)
	if err != nil {
		return "", err
	}
	return f.extracted(ctx, conf, pkg, ver)
}

func kernelIn(dir string) (Kernel, error) {
	done, err := os.ReadFile(filepath.Join(dir, ".done"))
	if err != nil {
		return Kernel{}, err
	}
	pkg, ver, _ := strings.Cut(strings.TrimSpace(string(done)), " ")
	imgs, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(imgs) != 1 {
		return Kernel{}, fmt.Errorf("kernel %s: want one boot/vmlinuz-*, found %d", dir, len(imgs))
	}
	rel := strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	mods := filepath.Join(dir, "lib", "modules", rel)
	if _, err := os.Stat(mods); err != nil {
		return Kernel{}, fmt.Errorf("kernel %s: %w", dir, err)
	}
	return Kernel{Package: pkg, Version: ver, Release: rel, Image: imgs[0], ModDir: mods}, nil
}

// Busybox returns the path of the static arm64 busybox binary from Debian's
// busybox-static, downloading it on first use.
func (f *Fetcher) Busybox(ctx context.Context) (string, error) {
	unlock, err := f.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	dir, err := f.memo(ctx, "busybox-static", func(ctx context.Context, conf string) (string, error) {
		return f.resolve(ctx, conf, "busybox-static")
	})
	if err != nil {
		cached, cerr := f.newest("busybox-static_")
		if cerr != nil {
			return "", err
		}
		f.log().Warn("vm: using a cached busybox", "dir", cached, "err", err)
		dir = cached
	}
	p := filepath.Join(dir, "bin", "busybox")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("busybox-static: %w", err)
	}
	return p, nil
}

func (f *Fetcher) resolve(ctx context.Context, conf, pkg string) (string, error) {
	ver, err := f.candidate(ctx, conf, pkg)
	if err != nil {
		return "", err
	}
	return f.extracted(ctx, conf, pkg, ver)
}

// readLines returns the non-empty, non-comment lines of a small text file.
func readLines(p string) ([]string, error) {
	fd, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer fd.Close()
	var out []string
	s := bufio.NewScanner(fd)
	for s.Scan() {
		l := strings.TrimSpace(s.Text())
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out, s.Err()
}
