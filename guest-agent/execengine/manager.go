package execengine

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/guest-agent/reaper"
	"github.com/sailbox/sailbox/guest-agent/spool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Config configures a Manager.
type Config struct {
	// StateDir holds the output spools (tmpfs in the guest: never a
	// filesystem that may be frozen).
	StateDir string
	// DefaultOutputCap is the per-stream spool cap (default 64 MiB).
	DefaultOutputCap uint64
	// KillGrace is the default time between SIGTERM and SIGKILL on timeout (default 2s).
	KillGrace time.Duration
	// DrainGrace bounds how long a finished exec waits for its pipes to close
	// when a background descendant keeps them open (default 250ms).
	DrainGrace time.Duration
	// FinishedTTL releases finished execs nobody released (default 1h).
	FinishedTTL time.Duration
	// BaseEnv is the environment every exec starts from (default os.Environ()).
	BaseEnv []string
	Logger  *slog.Logger
}

const defaultOutputCap = 64 << 20

// Manager owns the agent's execs.
type Manager struct {
	cfg    Config
	reaper *reaper.Reaper
	log    *slog.Logger

	mu    sync.Mutex
	execs map[string]*Exec
}

// NewManager creates the state dir and starts the TTL janitor.
func NewManager(ctx context.Context, cfg Config, r *reaper.Reaper) (*Manager, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("execengine: no state dir")
	}
	if cfg.DefaultOutputCap == 0 {
		cfg.DefaultOutputCap = defaultOutputCap
	}
	if cfg.KillGrace == 0 {
		cfg.KillGrace = 2 * time.Second
	}
	if cfg.DrainGrace == 0 {
		cfg.DrainGrace = 250 * time.Millisecond
	}
	if cfg.FinishedTTL == 0 {
		cfg.FinishedTTL = time.Hour
	}
	if cfg.BaseEnv == nil {
		cfg.BaseEnv = os.Environ()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	dir := filepath.Join(cfg.StateDir, "execs")
	// Spools of a previous agent process are orphans: their execs are gone.
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("execengine: state dir: %w", err)
	}
	m := &Manager{cfg: cfg, reaper: r, log: cfg.Logger, execs: make(map[string]*Exec)}
	go m.janitor(ctx)
	return m, nil
}

// Start starts an exec, or returns the existing one with the same id and
// request (created=false). The same id with a different request is
// AlreadyExists.
func (m *Manager) Start(spec Spec) (*Exec, bool, error) {
	if err := spec.Validate(); err != nil {
		return nil, false, err
	}
	if spec.ID == "" {
		spec.ID = NewID()
	}
	fp := spec.fingerprint()

	// Holding the lock across the start makes concurrent Starts of one id
	// run the command once.
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.execs[spec.ID]; ok {
		if e.fingerprint != fp {
			return nil, false, status.Errorf(codes.AlreadyExists, "exec %s already exists with a different request", spec.ID)
		}
		return e, false, nil
	}
	e, err := m.start(spec, fp)
	if err != nil {
		return nil, false, err
	}
	m.execs[spec.ID] = e
	return e, true, nil
}

func (m *Manager) start(spec Spec, fp [32]byte) (*Exec, error) {
	if spec.Cwd != "" {
		fi, err := os.Stat(spec.Cwd)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "exec %s: working directory %s: %v", spec.ID, spec.Cwd, unwrapPathErr(err))
		}
		if !fi.IsDir() {
			return nil, status.Errorf(codes.InvalidArgument, "exec %s: working directory %s is not a directory", spec.ID, spec.Cwd)
		}
	}
	if spec.KillGrace == 0 {
		spec.KillGrace = m.cfg.KillGrace
	}
	capBytes := spec.OutputCap
	if capBytes == 0 {
		capBytes = m.cfg.DefaultOutputCap
	}
	env := mergeEnv(m.cfg.BaseEnv, spec.Env)
	argv := spec.Argv
	if spec.Command != "" {
		argv = []string{"/bin/sh", "-c", spec.Command}
	}
	prog, err := lookPath(argv[0], env)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "exec %s: %v", spec.ID, err)
	}

	base := filepath.Join(m.cfg.StateDir, "execs", spec.ID)
	stdout, err := spool.Create(base+".stdout", capBytes)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "exec %s: %v", spec.ID, err)
	}
	stderr, err := spool.Create(base+".stderr", capBytes)
	if err != nil {
		stdout.Remove()
		return nil, status.Errorf(codes.Internal, "exec %s: %v", spec.ID, err)
	}
	e := &Exec{
		id: spec.ID, spec: spec, fingerprint: fp, stdout: stdout, stderr: stderr,
		done: make(chan struct{}), state: StateRunning,
	}
	started, err := startProcess(m.reaper, prog, argv, env, spec, stdout, stderr)
	if err != nil {
		stdout.Remove()
		stderr.Remove()
		return nil, status.Errorf(codes.Internal, "exec %s: start %s: %v", spec.ID, argv[0], err)
	}
	e.pid, e.proc, e.started = started.pid, started.proc, time.Now()
	if spec.Timeout > 0 {
		e.timeout = time.AfterFunc(spec.Timeout, func() { m.expire(e) })
	}
	go m.supervise(e, started)
	m.log.Debug("exec started", "id", e.id, "pid", e.pid, "command", spec.display())
	return e, nil
}

// expire handles a timeout: SIGTERM to the group, SIGKILL after the grace.
func (m *Manager) expire(e *Exec) {
	e.mu.Lock()
	if e.state.Final() {
		e.mu.Unlock()
		return
	}
	e.timedOut = true
	e.mu.Unlock()
	m.log.Info("exec timed out", "id", e.id, "timeout", e.spec.Timeout)
	e.proc.signalGroup(syscall.SIGTERM)
	time.AfterFunc(e.spec.KillGrace, func() { e.proc.signalGroup(syscall.SIGKILL) })
}

// supervise waits for the exit, then for the output to drain, then finishes.
func (m *Manager) supervise(e *Exec, p *started) {
	ws := <-p.exited
	select {
	case <-p.drained:
	case <-time.After(m.cfg.DrainGrace):
		m.log.Debug("exec output still open after exit (a background process holds it)", "id", e.id)
	}
	if err := e.finish(ws); err != nil {
		m.log.Error("exec finish refused", "id", e.id, "err", err)
		return
	}
	m.log.Debug("exec finished", "id", e.id, "status", ws)
}

// Shutdown kills the process group of every running exec (the agent is
// going away in an orderly way; nobody would be left to collect them).
func (m *Manager) Shutdown() {
	for _, e := range m.List() {
		if !e.Status().State.Final() {
			e.proc.signalGroup(syscall.SIGKILL)
		}
	}
}

// Get returns an exec by id.
func (m *Manager) Get(id string) (*Exec, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.execs[id]; ok {
		return e, nil
	}
	return nil, status.Errorf(codes.NotFound, "exec %s not found", id)
}

// List returns all execs, oldest first.
func (m *Manager) List() []*Exec {
	m.mu.Lock()
	list := make([]*Exec, 0, len(m.execs))
	for _, e := range m.execs {
		list = append(list, e)
	}
	m.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].started.Before(list[j].started) })
	return list
}

// Len returns the number of execs held.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.execs)
}

// Release forgets a finished exec and deletes its output.
func (m *Manager) Release(id string) error {
	m.mu.Lock()
	e, ok := m.execs[id]
	if !ok {
		m.mu.Unlock()
		return status.Errorf(codes.NotFound, "exec %s not found", id)
	}
	select {
	case <-e.done:
	default:
		m.mu.Unlock()
		return status.Errorf(codes.FailedPrecondition, "exec %s is still running", id)
	}
	delete(m.execs, id)
	m.mu.Unlock()
	e.stdout.Remove()
	e.stderr.Remove()
	return nil
}

func (m *Manager) janitor(ctx context.Context) {
	t := time.NewTicker(max(m.cfg.FinishedTTL/10, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, e := range m.List() {
			st := e.Status()
			if st.State.Final() && time.Since(st.Ended) > m.cfg.FinishedTTL {
				m.log.Info("releasing expired exec", "id", e.id, "ended", st.Ended)
				m.Release(e.id)
			}
		}
	}
}

func unwrapPathErr(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
