package rootfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultCacheRoot is ${SAILBOX_CACHE:-$HOME/.cache/sailbox}.
func DefaultCacheRoot() string {
	if d := os.Getenv("SAILBOX_CACHE"); d != "" {
		return d
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "sailbox")
	}
	return filepath.Join(os.TempDir(), "sailbox-cache")
}

// Cache is the image cache, <root>/images:
//
//	steps/<step digest>/rootfs/     the tree after that step (prefix reuse)
//	steps/<step digest>/step.json   the step and its build log path
//	out/<image id>/rootfs.ext4      a finished image
//	out/<image id>/image.json       its manifest (also /etc/sailbox/image.json inside)
//	out/<image id>/build.log        the full build log
//	out/<image id>/vmlinuz          the kernel whose modules the image carries
//	tmp/<build>/                    work and staging of a running build
//	logs/                           logs of failed builds
//
// Entries appear by rename from tmp/, so an entry that exists is complete;
// a failed build never adds or changes one.
type Cache struct{ Dir string }

// OpenCache returns the image cache under root ("" for DefaultCacheRoot).
func OpenCache(root string) Cache {
	if root == "" {
		root = DefaultCacheRoot()
	}
	return Cache{Dir: filepath.Join(root, "images")}
}

func (c Cache) stepDir(digest string) string { return filepath.Join(c.Dir, "steps", digest) }
func (c Cache) imageDir(id string) string    { return filepath.Join(c.Dir, "out", id) }
func (c Cache) tmpDir() string               { return filepath.Join(c.Dir, "tmp") }
func (c Cache) logDir() string               { return filepath.Join(c.Dir, "logs") }

// HasStep reports whether the tree after the step with this digest is cached.
func (c Cache) HasStep(digest string) bool {
	fi, err := os.Stat(filepath.Join(c.stepDir(digest), "rootfs"))
	return err == nil && fi.IsDir()
}

// LongestPrefix returns the largest i with digests[i] cached, or -1. digests
// is a definition's StepDigests (0 = the base).
func (c Cache) LongestPrefix(digests []string) int {
	for i := len(digests) - 1; i >= 0; i-- {
		if c.HasStep(digests[i]) {
			return i
		}
	}
	return -1
}

// Lookup returns the finished image with this id, if cached.
func (c Cache) Lookup(id string) (Manifest, bool) {
	dir := c.imageDir(id)
	m, err := readManifest(filepath.Join(dir, "image.json"))
	if err != nil {
		return Manifest{}, false
	}
	if _, err := os.Stat(filepath.Join(dir, "rootfs.ext4")); err != nil {
		return Manifest{}, false
	}
	return m, true
}

// Entry is one finished image in the cache.
type Entry struct {
	Manifest
	Dir  string `json:"dir"`
	Path string `json:"path"` // rootfs.ext4
	Size int64  `json:"size"`
}

// List returns the finished images, newest first.
func (c Cache) List() ([]Entry, error) {
	ents, err := os.ReadDir(filepath.Join(c.Dir, "out"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, e := range ents {
		dir := filepath.Join(c.Dir, "out", e.Name())
		m, err := readManifest(filepath.Join(dir, "image.json"))
		if err != nil {
			continue
		}
		p := filepath.Join(dir, "rootfs.ext4")
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		out = append(out, Entry{Manifest: m, Dir: dir, Path: p, Size: fi.Size()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].BuiltAt.After(out[j].BuiltAt) })
	return out, nil
}

// resolve finds the one image whose id or definition digest starts with ref.
func (c Cache) resolve(ref string) (Entry, error) {
	if len(ref) < 4 {
		return Entry{}, status.Errorf(codes.InvalidArgument, "image %q: give at least 4 characters of an id or digest", ref)
	}
	all, err := c.List()
	if err != nil {
		return Entry{}, status.Errorf(codes.Internal, "image cache %s: %v", c.Dir, err)
	}
	var hits []Entry
	for _, e := range all {
		if strings.HasPrefix(e.ID, ref) || strings.HasPrefix(e.Digest, ref) {
			hits = append(hits, e)
		}
	}
	switch len(hits) {
	case 0:
		return Entry{}, status.Errorf(codes.NotFound, "image %q: not in the cache %s", ref, c.Dir)
	case 1:
		return hits[0], nil
	}
	return Entry{}, status.Errorf(codes.InvalidArgument, "image %q: ambiguous (%d images match)", ref, len(hits))
}

// Remove deletes the image ref (an id or digest prefix) and the cached step
// trees no remaining image uses. It returns what it removed.
func (c Cache) Remove(ref string) ([]string, error) {
	e, err := c.resolve(ref)
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(e.Dir); err != nil {
		return nil, status.Errorf(codes.Internal, "remove %s: %v", e.Dir, err)
	}
	removed := []string{e.Dir}
	keep := map[string]bool{}
	rest, _ := c.List()
	for _, o := range rest {
		for _, d := range o.StepDigests {
			keep[d] = true
		}
	}
	for _, d := range e.StepDigests {
		if keep[d] || !c.HasStep(d) {
			continue
		}
		if err := os.RemoveAll(c.stepDir(d)); err != nil {
			return removed, status.Errorf(codes.Internal, "remove step %s: %v", d, err)
		}
		removed = append(removed, c.stepDir(d))
	}
	return removed, nil
}

// keepPerDigest is how many finished images of one definition stay cached:
// each change of the embedded agent or init makes a new one (its steps come
// from the cache), and the oldest go.
const keepPerDigest = 3

// prune removes all but the newest keep images of definition digest. Step
// trees stay (the newer images share them).
func (c Cache) prune(digest string, keep int) []string {
	all, _ := c.List() // newest first
	var removed []string
	n := 0
	for _, e := range all {
		if e.Digest != digest {
			continue
		}
		if n++; n > keep {
			if os.RemoveAll(e.Dir) == nil {
				removed = append(removed, e.Dir)
			}
		}
	}
	return removed
}

// Manifest describes a built image; it is /etc/sailbox/image.json in the
// image and image.json beside it.
type Manifest struct {
	ID          string     `json:"id"`     // cache key: digest + embedded binaries + kernel
	Digest      string     `json:"digest"` // the definition's digest
	Base        Base       `json:"base"`
	Suite       string     `json:"suite"`
	Arch        string     `json:"arch"`
	Steps       []Step     `json:"steps"`
	StepDigests []string   `json:"step_digests"` // 0 = base
	Agent       Binary     `json:"agent"`
	Init        Binary     `json:"init"`
	Kernel      *KernelRef `json:"kernel,omitempty"`
	EnvFile     string     `json:"env_file"`
	Mirror      string     `json:"mirror"`
	Builder     string     `json:"builder"` // sailbox version that built it
	BuiltAt     time.Time  `json:"built_at"`
	BuildSecs   float64    `json:"build_seconds"`
}

// Binary is an embedded static binary.
type Binary struct {
	Path    string `json:"path"` // in the image
	SHA256  string `json:"sha256"`
	Version string `json:"version,omitempty"`
}

// KernelRef is the VM kernel the image's modules belong to.
type KernelRef struct {
	Package string   `json:"package"`
	Version string   `json:"version"`
	Release string   `json:"release"`
	Modules string   `json:"modules"` // the load-order list in the image
	Loaded  []string `json:"module_files"`
}

func readManifest(p string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(p)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", p, err)
	}
	return m, nil
}
