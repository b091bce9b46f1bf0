package freeze

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults for Config fields left zero.
const (
	DefaultMountInfo     = "/proc/self/mountinfo"
	DefaultWatchdog      = 60 * time.Second
	DefaultHookTimeout   = 30 * time.Second
	DefaultCgroupTimeout = 10 * time.Second
)

// Starter starts a child process (start forks it and returns its pid) and
// delivers its wait status once. *reaper.Reaper implements it; the agent
// must pass it, because its global reaper would otherwise steal the status.
type Starter interface {
	Start(start func() (int, error)) (int, <-chan unix.WaitStatus, error)
}

// Config is fixed for the life of a Freezer.
type Config struct {
	// MountInfo is the mountinfo file listing candidate mounts
	// (default /proc/self/mountinfo).
	MountInfo string
	// Select, when set, limits the mounts considered at all; mounts it
	// rejects are neither frozen, thawed nor reported. Tests restrict the
	// freezer to their own loop mounts with it.
	Select func(Mount) bool
	// Exclude lists paths whose filesystems are never frozen (the agent's
	// state dir, ...). The directory of StateFile is always excluded.
	Exclude []string
	// HooksDir holds executables run in lexical order with argument
	// "freeze" before freezing and in reverse order with "thaw" after
	// thawing. Missing dir = no hooks. Dotfiles and non-executables are
	// ignored.
	HooksDir    string
	HookTimeout time.Duration // per hook run (default 30 s)
	// Watchdog thaws by itself this long after a freeze without a thaw
	// (default 60 s); Options.Watchdog overrides it per freeze.
	Watchdog      time.Duration
	CgroupTimeout time.Duration // wait for "frozen 1" (default 10 s)
	// StateFile, when set, records a freeze so that an agent restarted
	// while frozen knows it is frozen (and its watchdog thaws). Keep it on
	// tmpfs.
	StateFile string
	Starter   Starter // nil: plain wait4 on each hook (fine without a global reaper)
	// Logger is used while frozen too: its output must not go to a
	// filesystem that gets frozen (the agent logs to tmpfs or a console).
	Logger *slog.Logger
}

// Options are per Freeze call.
type Options struct {
	// Cgroups are cgroup v2 directories (absolute paths) to freeze before
	// the filesystems and to thaw after them.
	Cgroups []string
	// Watchdog overrides Config.Watchdog for this freeze.
	Watchdog time.Duration
}

// Skipped is a mount that was not frozen, and why.
type Skipped struct {
	MountPoint string
	FSType     string
	Reason     string
}

// Reasons a mount is skipped.
const (
	SkipPseudo        = "pseudo or network filesystem"
	SkipReadOnly      = "read-only"
	SkipExcluded      = "excluded"
	SkipUnsupported   = "filesystem does not support freezing"
	SkipAlreadyFrozen = "already frozen (another mount of a frozen filesystem)"
)

// Report says what a Freeze did.
type Report struct {
	Frozen           []string // mount points frozen, in freeze order
	Skipped          []Skipped
	Cgroups          []string
	Hooks            []string // pre-freeze hooks that ran
	AlreadyFrozen    bool     // nothing done: the freezer was already frozen (watchdog re-armed)
	Since            time.Time
	WatchdogDeadline time.Time
}

// ThawReport says what a Thaw did.
type ThawReport struct {
	WasFrozen bool          // the freezer had frozen something
	FrozenFor time.Duration // how long it was frozen
	Thawed    []string      // mount points FITHAW actually thawed, in thaw order
	Cgroups   []string
	Hooks     []string // post-thaw hooks that ran
	Warnings  []string // post-thaw hook failures (the thaw itself succeeded)
}

// State is frozen or thawed.
type State int

const (
	Thawed State = iota
	Frozen
)

func (s State) String() string {
	if s == Frozen {
		return "frozen"
	}
	return "thawed"
}

// Thaw causes, reported by Status.LastThaw.
const (
	ThawRequested = "request"
	ThawWatchdog  = "watchdog"
	ThawRollback  = "rollback"
)

// Status is a snapshot of the freezer's state.
type Status struct {
	State            State
	Since            time.Time // when State began (zero: thawed since the agent started)
	Mounts           []string  // frozen mount points
	Cgroups          []string  // frozen cgroups
	WatchdogDeadline time.Time // zero when thawed
	LastThaw         string    // cause of the last thaw: request, watchdog or rollback
	LastThawError    string    // error of the last thaw, if it failed
}

// fsOps are the kernel operations on a mount point.
type fsOps interface {
	// syncfs writes the filesystem's dirty data.
	syncfs(mountPoint string) error
	// freeze does FIFREEZE; dev is the filesystem's st_dev (also on error
	// when known).
	freeze(mountPoint string) (dev uint64, err error)
	// thaw does FITHAW until EINVAL; n counts the successful calls.
	thaw(mountPoint string) (n int, err error)
	// dev returns st_dev of path, or of its nearest existing ancestor.
	dev(path string) (uint64, error)
	// mkdev encodes a mountinfo MAJOR:MINOR as st_dev.
	mkdev(major, minor uint32) uint64
}

type frozenMount struct {
	MountPoint string `json:"mount_point"`
	Dev        uint64 `json:"dev"`
}

// state is guarded by Freezer.mu; it is also what the state file holds.
type state struct {
	Frozen   bool          `json:"frozen"`
	Since    time.Time     `json:"since"`
	Mounts   []frozenMount `json:"mounts"`  // in freeze order
	Busy     []frozenMount `json:"busy"`    // EBUSY: frozen through another mount
	Cgroups  []string      `json:"cgroups"` // in freeze order
	Hooks    []string      `json:"hooks"`   // pre-freeze hooks that succeeded
	Deadline time.Time     `json:"deadline"`
	LastThaw string        `json:"-"`
	LastErr  string        `json:"-"`
}

// Freezer freezes and thaws. Its methods are safe for concurrent use;
// Freeze and Thaw are serialized, Status and CheckWritable never wait for
// them.
type Freezer struct {
	cfg Config
	fs  fsOps
	log *slog.Logger

	opMu  sync.Mutex // serializes Freeze, Thaw and the watchdog
	timer *time.Timer
	seq   uint64 // freeze generation, so a stale watchdog does nothing

	mu sync.RWMutex
	st state
}

// New returns a Freezer. When Config.StateFile records a freeze (the agent
// restarted while frozen), the Freezer starts frozen with a fresh watchdog.
func New(cfg Config) (*Freezer, error) {
	if cfg.MountInfo == "" {
		cfg.MountInfo = DefaultMountInfo
	}
	if cfg.Watchdog <= 0 {
		cfg.Watchdog = DefaultWatchdog
	}
	if cfg.HookTimeout <= 0 {
		cfg.HookTimeout = DefaultHookTimeout
	}
	if cfg.CgroupTimeout <= 0 {
		cfg.CgroupTimeout = DefaultCgroupTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Starter == nil {
		cfg.Starter = waitStarter{}
	}
	if cfg.StateFile != "" {
		cfg.Exclude = append(append([]string(nil), cfg.Exclude...), filepath.Dir(cfg.StateFile))
	}
	f := &Freezer{cfg: cfg, fs: newFSOps(), log: cfg.Logger.With("component", "freeze")}
	if cfg.StateFile != "" {
		b, err := os.ReadFile(cfg.StateFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("freeze state %s: %w", cfg.StateFile, err)
		default:
			var st state
			if err := json.Unmarshal(b, &st); err != nil {
				return nil, fmt.Errorf("freeze state %s: %w", cfg.StateFile, err)
			}
			if st.Frozen {
				f.st = st
				f.opMu.Lock()
				f.armLocked(cfg.Watchdog)
				f.opMu.Unlock()
				f.log.Warn("agent restarted while frozen; watchdog armed", "since", st.Since, "mounts", mountPoints(st.Mounts))
			}
		}
	}
	return f, nil
}

// Status reports frozen or thawed and since when.
func (f *Freezer) Status() Status {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := Status{Since: f.st.Since, LastThaw: f.st.LastThaw, LastThawError: f.st.LastErr}
	if f.st.Frozen {
		s.State = Frozen
		s.Mounts = mountPoints(f.st.Mounts)
		s.Cgroups = append([]string(nil), f.st.Cgroups...)
		s.WatchdogDeadline = f.st.Deadline
	}
	return s
}

// CheckWritable returns a FailedPrecondition error when path (which need
// not exist yet) lies on a filesystem that is frozen or being frozen, so
// callers refuse a write instead of blocking until the thaw.
func (f *Freezer) CheckWritable(path string) error {
	f.mu.RLock()
	n := len(f.st.Mounts) + len(f.st.Busy)
	since := f.st.Since
	f.mu.RUnlock()
	if n == 0 {
		return nil
	}
	dev, err := f.fs.dev(path)
	if err != nil {
		return nil // the write itself will report the problem
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, m := range append(append([]frozenMount(nil), f.st.Mounts...), f.st.Busy...) {
		if m.Dev == dev {
			when := "being frozen"
			if f.st.Frozen {
				when = "frozen since " + since.UTC().Format(time.RFC3339Nano)
			}
			return status.Errorf(codes.FailedPrecondition, "%s: filesystem %s is %s for a snapshot; retry after the thaw", path, m.MountPoint, when)
		}
	}
	return nil
}

// Freeze runs the pre-freeze hooks, freezes opts.Cgroups and then every
// selected writable mount. On any failure everything done so far is undone
// and the error is returned as a gRPC status. Freezing while frozen only
// re-arms the watchdog.
func (f *Freezer) Freeze(ctx context.Context, opts Options) (Report, error) {
	f.opMu.Lock()
	defer f.opMu.Unlock()
	wd := opts.Watchdog
	if wd <= 0 {
		wd = f.cfg.Watchdog
	}
	if f.Status().State == Frozen {
		f.armLocked(wd)
		st := f.Status()
		return Report{AlreadyFrozen: true, Frozen: st.Mounts, Cgroups: st.Cgroups, Since: st.Since, WatchdogDeadline: st.WatchdogDeadline}, nil
	}
	for _, cg := range opts.Cgroups {
		if !filepath.IsAbs(cg) {
			return Report{}, status.Errorf(codes.InvalidArgument, "cgroup %q: want an absolute path", cg)
		}
		if _, err := os.Stat(filepath.Join(cg, "cgroup.freeze")); err != nil {
			return Report{}, status.Errorf(codes.InvalidArgument, "cgroup %s: not a non-root cgroup v2 directory: %v", cg, err)
		}
	}
	cands, skipped, err := f.candidates()
	if err != nil {
		return Report{}, status.Errorf(codes.Internal, "list mounts: %v", err)
	}
	hooks, err := f.hooks()
	if err != nil {
		return Report{}, status.Errorf(codes.Internal, "hooks dir %s: %v", f.cfg.HooksDir, err)
	}
	rep := Report{Skipped: skipped}
	start := time.Now()

	var ran []string
	for _, h := range hooks {
		if err := ctx.Err(); err != nil {
			f.thawHooks(ran)
			return Report{}, status.FromContextError(err).Err()
		}
		if err := f.runHook(ctx, h, "freeze"); err != nil {
			f.log.Warn("pre-freeze hook failed; freeze aborted", "hook", h, "err", err)
			f.thawHooks(ran)
			return Report{}, err
		}
		ran = append(ran, h)
	}
	rep.Hooks = ran

	f.mu.Lock()
	f.st = state{Hooks: ran, Since: f.st.Since, LastThaw: f.st.LastThaw, LastErr: f.st.LastErr}
	f.mu.Unlock()
	// The rollback is in place before anything is frozen.
	ok := false
	defer func() {
		if !ok {
			if _, err := f.thawLocked(ThawRollback); err != nil {
				f.log.Error("rollback thaw failed", "err", err)
			}
		}
	}()

	for _, cg := range opts.Cgroups {
		f.mu.Lock()
		f.st.Cgroups = append(f.st.Cgroups, cg) // before the write: a partial freeze is undone too
		f.mu.Unlock()
		if err := freezeCgroup(ctx, cg, f.cfg.CgroupTimeout); err != nil {
			return Report{}, err
		}
	}
	rep.Cgroups = append([]string(nil), opts.Cgroups...)

	// Sync everything first, so the time between the first and the last
	// FIFREEZE stays short. FIFREEZE syncs again, so a failure is not fatal.
	for i := len(cands) - 1; i >= 0; i-- {
		if err := f.fs.syncfs(cands[i].MountPoint); err != nil {
			f.log.Warn("syncfs failed", "mount", cands[i].MountPoint, "err", err)
		}
	}
	for i := len(cands) - 1; i >= 0; i-- {
		m := cands[i]
		if err := ctx.Err(); err != nil {
			return Report{}, status.FromContextError(err).Err()
		}
		dev, err := f.fs.freeze(m.MountPoint)
		switch {
		case err == nil:
			f.mu.Lock()
			f.st.Mounts = append(f.st.Mounts, frozenMount{m.MountPoint, dev})
			f.mu.Unlock()
			rep.Frozen = append(rep.Frozen, m.MountPoint)
		case errors.Is(err, syscall.EOPNOTSUPP):
			rep.Skipped = append(rep.Skipped, Skipped{m.MountPoint, m.FSType, SkipUnsupported})
		case errors.Is(err, syscall.EBUSY):
			f.mu.Lock()
			f.st.Busy = append(f.st.Busy, frozenMount{m.MountPoint, dev})
			f.mu.Unlock()
			rep.Skipped = append(rep.Skipped, Skipped{m.MountPoint, m.FSType, SkipAlreadyFrozen})
		default:
			return Report{}, status.Errorf(codes.Internal, "freeze %s (%s): %v", m.MountPoint, m.FSType, err)
		}
	}

	now := time.Now()
	f.mu.Lock()
	f.st.Frozen = true
	f.st.Since = now
	f.mu.Unlock()
	f.armLocked(wd)
	if err := f.saveState(); err != nil {
		return Report{}, status.Errorf(codes.Internal, "freeze state %s: %v", f.cfg.StateFile, err)
	}
	ok = true
	st := f.Status()
	rep.Since, rep.WatchdogDeadline = st.Since, st.WatchdogDeadline
	f.log.Info("frozen", "mounts", rep.Frozen, "cgroups", rep.Cgroups, "hooks", len(rep.Hooks), "took", now.Sub(start), "watchdog", wd)
	return rep, nil
}

// Thaw thaws what Freeze froze (FITHAW in forward order, then the cgroups,
// then the post-thaw hooks) and in addition FITHAWs every selected mount,
// so a freeze left behind by a crashed agent or by anyone else is undone
// too. Thawing while thawed is harmless. A cancelled ctx does not stop a
// thaw halfway.
func (f *Freezer) Thaw(ctx context.Context) (ThawReport, error) {
	f.opMu.Lock()
	defer f.opMu.Unlock()
	return f.thawLocked(ThawRequested)
}

func (f *Freezer) thawLocked(cause string) (ThawReport, error) {
	if f.timer != nil {
		f.timer.Stop()
		f.timer = nil
	}
	f.seq++
	f.mu.RLock()
	st := f.st
	f.mu.RUnlock()
	rep := ThawReport{WasFrozen: st.Frozen || len(st.Mounts) > 0 || len(st.Cgroups) > 0}
	if st.Frozen {
		rep.FrozenFor = time.Since(st.Since)
	}
	var errs []error
	var left []frozenMount
	done := map[string]bool{}
	// Forward mount order is the reverse of the freeze order.
	for i := len(st.Mounts) - 1; i >= 0; i-- {
		m := st.Mounts[i]
		done[m.MountPoint] = true
		n, err := f.fs.thaw(m.MountPoint)
		if n > 0 {
			rep.Thawed = append(rep.Thawed, m.MountPoint)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("thaw %s: %w", m.MountPoint, err))
			left = append([]frozenMount{m}, left...)
		}
	}
	// Sweep every selected mount for freezes we did not record.
	if cands, _, err := f.candidates(); err != nil {
		f.log.Warn("thaw: list mounts", "err", err)
	} else {
		for _, m := range cands {
			if done[m.MountPoint] {
				continue
			}
			n, err := f.fs.thaw(m.MountPoint)
			if n > 0 {
				rep.Thawed = append(rep.Thawed, m.MountPoint)
				f.log.Info("thawed a freeze this agent had not recorded", "mount", m.MountPoint)
			}
			if err != nil {
				f.log.Warn("thaw sweep", "mount", m.MountPoint, "err", err)
			}
		}
	}
	var leftCg []string
	for _, cg := range st.Cgroups {
		if err := thawCgroup(cg); err != nil {
			errs = append(errs, err)
			leftCg = append(leftCg, cg)
			continue
		}
		rep.Cgroups = append(rep.Cgroups, cg)
	}

	now := time.Now()
	f.mu.Lock()
	if len(left) > 0 || len(leftCg) > 0 {
		// Still partly frozen: keep what is left so a retry thaws it.
		f.st.Frozen, f.st.Mounts, f.st.Busy, f.st.Cgroups = true, left, nil, leftCg
		if f.st.Since.IsZero() {
			f.st.Since = now
		}
		f.st.LastErr = errors.Join(errs...).Error()
		f.mu.Unlock()
		f.armLocked(f.cfg.Watchdog) // the watchdog retries
		if err := f.saveState(); err != nil {
			f.log.Warn("freeze state", "file", f.cfg.StateFile, "err", err)
		}
		return rep, status.Errorf(codes.Internal, "thaw (%s): %v", cause, errors.Join(errs...))
	}
	f.st = state{LastThaw: cause, Since: now}
	if !rep.WasFrozen {
		f.st.Since = st.Since // nothing changed
		f.st.LastThaw = st.LastThaw
	}
	f.mu.Unlock()
	if err := f.saveState(); err != nil {
		f.log.Warn("freeze state", "file", f.cfg.StateFile, "err", err)
	}
	rep.Hooks, rep.Warnings = f.thawHooks(st.Hooks)
	if rep.WasFrozen {
		f.log.Info("thawed", "cause", cause, "mounts", rep.Thawed, "cgroups", rep.Cgroups, "frozen_for", rep.FrozenFor)
	}
	return rep, nil
}

// armLocked (re)starts the watchdog. Callers hold opMu.
func (f *Freezer) armLocked(d time.Duration) {
	if f.timer != nil {
		f.timer.Stop()
	}
	f.seq++
	seq := f.seq
	f.mu.Lock()
	f.st.Deadline = time.Now().Add(d)
	f.mu.Unlock()
	f.timer = time.AfterFunc(d, func() {
		f.opMu.Lock()
		defer f.opMu.Unlock()
		if f.seq != seq {
			return
		}
		// Thaw before logging: a log written to a frozen filesystem would
		// block the only thing that can unfreeze it.
		_, err := f.thawLocked(ThawWatchdog)
		f.log.Warn("no thaw arrived in time; watchdog thawed", "after", d, "err", err)
	})
}

func (f *Freezer) saveState() error {
	if f.cfg.StateFile == "" {
		return nil
	}
	f.mu.RLock()
	st := f.st
	f.mu.RUnlock()
	if !st.Frozen {
		if err := os.Remove(f.cfg.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := f.cfg.StateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, f.cfg.StateFile)
}

// candidates lists the selected mounts to freeze, in mount order, and the
// ones skipped for their type, read-only state or exclusion.
func (f *Freezer) candidates() ([]Mount, []Skipped, error) {
	ms, err := ReadMountInfo(f.cfg.MountInfo)
	if err != nil {
		return nil, nil, err
	}
	excl := map[uint64]bool{}
	exclPath := map[string]bool{}
	for _, p := range f.cfg.Exclude {
		if p == "" {
			continue
		}
		exclPath[filepath.Clean(p)] = true
		if d, err := f.fs.dev(p); err == nil {
			excl[d] = true
		}
	}
	var out []Mount
	var skipped []Skipped
	for _, m := range ms {
		if f.cfg.Select != nil && !f.cfg.Select(m) {
			continue
		}
		reason := ""
		switch {
		case unfreezable(m):
			reason = SkipPseudo
		case m.ReadOnly():
			reason = SkipReadOnly
		case exclPath[m.MountPoint] || excl[f.fs.mkdev(m.Major, m.Minor)]:
			reason = SkipExcluded
		}
		if reason != "" {
			skipped = append(skipped, Skipped{m.MountPoint, m.FSType, reason})
			continue
		}
		out = append(out, m)
	}
	return out, skipped, nil
}

// pseudoFS are filesystems without a block device to quiesce, or whose
// FIFREEZE could hang or make no sense (network and FUSE: a frozen FUSE
// server would block the agent).
var pseudoFS = map[string]bool{
	"proc": true, "sysfs": true, "tmpfs": true, "ramfs": true, "devtmpfs": true, "devpts": true,
	"cgroup": true, "cgroup2": true, "mqueue": true, "hugetlbfs": true, "debugfs": true,
	"tracefs": true, "securityfs": true, "pstore": true, "bpf": true, "configfs": true,
	"fusectl": true, "binfmt_misc": true, "autofs": true, "efivarfs": true, "rpc_pipefs": true,
	"nsfs": true, "overlay": true, "squashfs": true, "iso9660": true, "erofs": true,
	"nfs": true, "nfs4": true, "cifs": true, "smb3": true, "9p": true, "virtiofs": true,
	"fuse": true, "fuseblk": true, "ceph": true, "glusterfs": true,
}

func unfreezable(m Mount) bool {
	if pseudoFS[m.FSType] || strings.HasPrefix(m.FSType, "fuse.") {
		return true
	}
	// Anonymous devices (major 0) have no block device behind them; btrfs
	// is the exception (its subvolumes report anonymous devices).
	return m.Major == 0 && m.FSType != "btrfs"
}

func mountPoints(ms []frozenMount) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.MountPoint
	}
	return out
}
