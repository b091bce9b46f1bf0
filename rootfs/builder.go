package rootfs

import (
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultTimeout bounds a whole build (image_build_timeout).
const DefaultTimeout = 1800 * time.Second

// Where the builder puts things in the image (imageinit's defaults).
const (
	GuestAgentPath = "/usr/bin/guest-agent"
	InitPath       = "/sbin/init"
	ModulesList    = "/etc/sailbox/modules"
	ManifestPath   = "/etc/sailbox/image.json"
)

// layoutVersion changes when the builder changes what it puts into an image
// in a way that must invalidate finished images (not step trees).
const layoutVersion = "1"

// Builder builds images into the cache.
type Builder struct {
	// CacheRoot is the cache root ("" = ${SAILBOX_CACHE:-$HOME/.cache/sailbox});
	// images live in CacheRoot/images, the kernel where the VM driver keeps it.
	CacheRoot string
	// BinDir holds the static guest binaries for the base's architecture
	// (guest-agent, imageinit); "" = FindBinDir.
	BinDir string
	// Timeout bounds the build (0 = DefaultTimeout). On expiry every
	// process of the build is killed and its work removed.
	Timeout time.Duration
	// Progress gets step names and elapsed times (nil = discard).
	Progress io.Writer
	// Mirror overrides the host apt's Debian mirror.
	Mirror *Mirror
	// MarginMiB is free space added to the content (0 = 256).
	MarginMiB int64
	// Kernel overrides the VM kernel lookup (tests).
	Kernel KernelFunc
}

// Kernel is the VM kernel whose modules go into the image.
type Kernel struct {
	Package, Version, Release string
	Image                     string // host path of the kernel Image
	ModDir                    string // host path of lib/modules/<Release>
	// Modules returns the module files (relative to ModDir) the VM needs,
	// dependencies first.
	Modules func() ([]string, error)
}

// KernelFunc fetches (or finds cached) the VM kernel for a Debian arch.
type KernelFunc func(ctx context.Context, cacheRoot, debArch string) (*Kernel, error)

// Result is a built (or cached) image.
type Result struct {
	Manifest
	Path        string        // rootfs.ext4
	Dir         string        // its cache entry
	KernelImage string        // vmlinuz matching the image's modules ("" if none)
	Log         string        // the full build log
	Cached      bool          // served from the cache without building
	FromStep    int           // the build started after this cached step (-1 = from scratch)
	Elapsed     time.Duration // of this call
}

// FindBinDir locates the static guest binaries for a base: $SAILBOX_GUEST_BIN
// if set, else bin/<os-arch> beside the running executable (make build
// puts host-supervisor in bin/), else ./bin/<os-arch>.
func FindBinDir(base Base) string {
	info := bases[base]
	if d := os.Getenv("SAILBOX_GUEST_BIN"); d != "" {
		return d
	}
	if exe, err := os.Executable(); err == nil {
		d := filepath.Join(filepath.Dir(exe), info.BinDir)
		if _, err := os.Stat(filepath.Join(d, "guest-agent")); err == nil {
			return d
		}
	}
	return filepath.Join("bin", info.BinDir)
}

// guestBinaries returns the agent and init paths in dir, or a
// FailedPrecondition saying how to get them.
func guestBinaries(dir string) (agent, init string, err error) {
	agent, init = filepath.Join(dir, "guest-agent"), filepath.Join(dir, "imageinit")
	for _, p := range []string{agent, init} {
		if _, err := os.Stat(p); err != nil {
			hint := "run `make build`"
			if filepath.Base(p) == "imageinit" {
				hint = "run `make build` (it builds imageinit once imageinit/main.go exists)"
			}
			return "", "", status.Errorf(codes.FailedPrecondition, "static guest binary %s missing: %s", p, hint)
		}
	}
	return agent, init, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// binaryVersion reads the sailbox version stamped into a Go binary by the
// Makefile's -X ldflag, else its VCS revision.
func binaryVersion(p string) string {
	bi, err := buildinfo.ReadFile(p)
	if err != nil {
		return ""
	}
	var rev string
	for _, s := range bi.Settings {
		switch s.Key {
		case "-ldflags":
			for _, f := range strings.Fields(s.Value) {
				if v, ok := strings.CutPrefix(f, "github.com/sailbox/sailbox/internal/version.Version="); ok {
					return strings.Trim(v, `'"`)
				}
			}
		case "vcs.revision":
			rev = s.Value
		}
	}
	return rev
}

// imageID is the cache key of a finished image: the definition plus what
// the builder embeds (agent, init, kernel flavour, layout).
func imageID(digest, agentSHA, initSHA, kernelPkg string) string {
	var e enc
	e.str("sailbox.image.id.v1", digest, agentSHA, initSHA, kernelPkg, layoutVersion)
	return e.sum()
}

// short abbreviates a digest for messages.
func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}
