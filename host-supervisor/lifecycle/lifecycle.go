package lifecycle

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/vmm"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Journal keeps a sandbox's checkpoint generation durably.
type Journal interface {
	// Generation is the sandbox's last checkpoint (0: none).
	Generation(sandbox string) (uint64, error)
	// BumpGeneration records a new checkpoint and returns its generation.
	BumpGeneration(sandbox string) (uint64, error)
	// RestoreGeneration records that the sandbox now runs checkpoint gen:
	// its unfinished execs accepted after that checkpoint are marked lost
	// ("not replayed"); it returns their ids.
	RestoreGeneration(sandbox string, gen uint64) (lost []string, err error)
}

// Disconnecter is an agent client that can drop its connection and redial
// on the next call (agentclient.Client).
type Disconnecter interface{ Disconnect() }

// State is a sandbox's run state as the lifecycle sees it.
type State int

const (
	Running State = iota
	Paused        // paused by request; only Resume runs it again
	Asleep        // paused by Sleep; Wake (the next exec or ingress) or Resume runs it again
)

func (s State) String() string {
	switch s {
	case Running:
		return "running"
	case Paused:
		return "paused"
	case Asleep:
		return "asleep"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// EntropyBytes is how much fresh entropy each Resume carries (the agent
// wants at least 64).
const EntropyBytes = 256

// Config is one sandbox's parts.
type Config struct {
	ID      string
	Agent   agentv1.SnapshotService // a reconnecting client (agentclient.Client)
	VMM     vmm.VMM
	Journal Journal
	// State is the run state the VM is in now (default Running): a daemon
	// that restarts re-attaches a sleeping or paused VM as such.
	State State
	// ThawTimeout bounds the thaw (and the VMM resume) done after a failed
	// or cancelled checkpoint (default 30s).
	ThawTimeout time.Duration
	// FreezeWatchdog is the guest's self-thaw time for a checkpoint
	// (default 0: the agent's default, 60 s).
	FreezeWatchdog time.Duration
	Logger         *slog.Logger
}

// Sandbox runs the lifecycle operations of one sandbox, one at a time.
type Sandbox struct {
	cfg Config
	log *slog.Logger

	mu sync.Mutex // serializes the operations
	// state is written under mu but read without it: State is called from
	// within operations (the daemon's journal lists sandboxes with their state).
	state atomic.Int32
}

// New returns the lifecycle of a sandbox in run state cfg.State.
func New(cfg Config) *Sandbox {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ThawTimeout <= 0 {
		cfg.ThawTimeout = 30 * time.Second
	}
	s := &Sandbox{cfg: cfg, log: cfg.Logger.With("sandbox", cfg.ID)}
	s.state.Store(int32(cfg.State))
	return s
}

// ID is the sandbox id.
func (s *Sandbox) ID() string { return s.cfg.ID }

// State is the current run state.
func (s *Sandbox) State() State { return State(s.state.Load()) }

// CheckpointOptions configure Checkpoint.
type CheckpointOptions struct {
	// Path receives the VMM snapshot (ignored by a VMM that cannot snapshot).
	Path string
	// Cgroups (cgroup v2 directories in the guest) are frozen too.
	Cgroups []string
	// WhileQuiesced runs after the VMM step, while the guest's filesystems
	// are frozen (and the VM paused, for a VMM that cannot snapshot): the
	// place to copy the VM's disk images, which are consistent then. Its
	// error fails the checkpoint.
	WhileQuiesced func(ctx context.Context) error
}

// CheckpointReport says what a checkpoint did.
type CheckpointReport struct {
	Generation uint64
	// Snapshot is the path written; empty when the VMM could only pause.
	Snapshot string
	// Paused: the VMM cannot snapshot, so the consistent point was a pause.
	Paused bool
	// Frozen are the guest mount points frozen, in freeze order.
	Frozen []string
	// Quiesced is how long the guest was frozen (from the agent's thaw).
	Quiesced time.Duration
	// Freeze, VMM and Thaw are the durations of the three steps.
	Freeze, VMM, Thaw time.Duration
}

// Checkpoint freezes the guest, snapshots the VM (or pauses and resumes it
// when the VMM cannot snapshot), thaws and bumps the generation. The thaw
// is attempted on every path, with its own timeout even when ctx ended. A
// checkpoint whose VMM step succeeded is journalled even when the thaw then
// fails (the snapshot is consistent; the guest's watchdog thaws by itself);
// the error says so.
func (s *Sandbox) Checkpoint(ctx context.Context, o CheckpointOptions) (*CheckpointReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.awakeLocked(ctx, "checkpoint"); err != nil {
		return nil, err
	}
	caps := s.cfg.VMM.Capabilities()
	if !caps.Snapshot && !(caps.Pause && caps.Resume) {
		return nil, vmm.Unsupported(caps.VMM, "checkpoint", "neither snapshot nor pause/resume: "+caps.Why)
	}
	if caps.Snapshot && o.Path == "" {
		return nil, status.Errorf(codes.InvalidArgument, "sandbox %s: checkpoint: no snapshot path", s.cfg.ID)
	}
	rep := &CheckpointReport{}
	t0 := time.Now()
	fr, err := s.cfg.Agent.Freeze(ctx, &agentv1.FreezeRequest{Cgroups: o.Cgroups, WatchdogMs: s.cfg.FreezeWatchdog.Milliseconds()})
	rep.Freeze = time.Since(t0)
	if err != nil {
		// The agent rolled back its own partial freeze; thaw anyway in case
		// the reply, not the freeze, was lost.
		_, terr := s.thaw(ctx, rep)
		return nil, withCause(wrap(err, "sandbox %s: checkpoint: freeze", s.cfg.ID), terr, "thaw")
	}
	rep.Frozen = fr.Frozen

	t1 := time.Now()
	var vmmErr error
	if caps.Snapshot {
		vmmErr = s.cfg.VMM.Snapshot(ctx, o.Path)
		if vmmErr == nil {
			rep.Snapshot = o.Path
			vmmErr = s.whileQuiesced(ctx, o)
		}
	} else {
		vmmErr = s.cfg.VMM.Pause(ctx)
		if vmmErr == nil {
			vmmErr = s.whileQuiesced(ctx, o)
		}
		// Resume even after a failed pause: the VM may be half stopped, and
		// the guest must run to be thawed.
		rctx, cancel := s.cleanupCtx(ctx)
		rerr := s.cfg.VMM.Resume(rctx)
		cancel()
		if vmmErr == nil {
			rep.Paused = true
			vmmErr = rerr
		} else {
			vmmErr = withCause(vmmErr, rerr, "resume")
		}
	}
	rep.VMM = time.Since(t1)

	t2 := time.Now()
	tr, thawErr := s.thaw(ctx, rep)
	rep.Thaw = time.Since(t2)
	if vmmErr != nil {
		return nil, withCause(wrap(vmmErr, "sandbox %s: checkpoint", s.cfg.ID), thawErr, "thaw")
	}
	if thawErr == nil && !tr.WasFrozen {
		// Something (the guest's watchdog) thawed during the VMM step: the
		// state captured may not be quiesced. Not a checkpoint.
		return nil, status.Errorf(codes.Aborted, "sandbox %s: checkpoint: the guest thawed by itself before the VMM step ended (%v; freeze watchdog %v): not journalled",
			s.cfg.ID, rep.VMM.Round(time.Millisecond), watchdogText(fr.WatchdogDeadlineUnixNano, fr.SinceUnixNano))
	}
	gen, err := s.cfg.Journal.BumpGeneration(s.cfg.ID)
	if err != nil {
		return nil, withCause(wrap(err, "sandbox %s: checkpoint taken but not journalled", s.cfg.ID), thawErr, "thaw")
	}
	rep.Generation = gen
	s.log.Info("checkpoint", "generation", gen, "snapshot", rep.Snapshot, "paused", rep.Paused, "frozen", rep.Frozen,
		"freeze", rep.Freeze, "vmm", rep.VMM, "thaw", rep.Thaw)
	if thawErr != nil {
		return rep, wrap(thawErr, "sandbox %s: checkpoint generation %d taken, but the thaw failed (the guest's watchdog thaws by itself)", s.cfg.ID, gen)
	}
	return rep, nil
}

func (s *Sandbox) whileQuiesced(ctx context.Context, o CheckpointOptions) error {
	if o.WhileQuiesced == nil {
		return nil
	}
	if err := o.WhileQuiesced(ctx); err != nil {
		return wrap(err, "while quiesced")
	}
	return nil
}

func (s *Sandbox) thaw(ctx context.Context, rep *CheckpointReport) (*agentv1.ThawResponse, error) {
	tctx, cancel := s.cleanupCtx(ctx)
	defer cancel()
	tr, err := s.cfg.Agent.Thaw(tctx, &agentv1.ThawRequest{})
	if err == nil {
		rep.Quiesced = time.Duration(tr.FrozenForNs)
	}
	return tr, err
}

func watchdogText(deadline, since int64) string {
	if deadline == 0 || since == 0 {
		return "unknown"
	}
	return time.Duration(deadline - since).Round(time.Millisecond).String()
}

// cleanupCtx outlives a cancelled ctx: undoing a freeze or pause must
// still happen.
func (s *Sandbox) cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ThawTimeout)
}

// RestoreOptions configure Restore and Fork.
type RestoreOptions struct {
	Path string
	// Generation of the checkpoint at Path; 0 means the journal's current one.
	Generation uint64
	// Identity is the new identity of a fork (nil for a restore).
	Identity *agentv1.SandboxIdentity
}

// RestoreReport says what a restore did.
type RestoreReport struct {
	Generation uint64
	// Lost are the execs marked lost: accepted after the checkpoint.
	Lost   []string
	Resume *agentv1.ResumeResponse
}

// Restore loads the checkpoint at o.Path into the VMM, brings the guest up
// to date (host time, fresh entropy, generation) and marks the execs
// accepted after that checkpoint lost. Once the VMM has restored, the
// journal is updated even if the Resume call fails: those execs are gone
// either way.
func (s *Sandbox) Restore(ctx context.Context, o RestoreOptions) (*RestoreReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restoreLocked(ctx, "restore", o)
}

// Fork restores the checkpoint at o.Path into this (new) sandbox with a new
// identity: hostname, sandbox id (default this sandbox's id), network. The
// agent drops the established TCP connections of the old identity.
func (s *Sandbox) Fork(ctx context.Context, o RestoreOptions) (*RestoreReport, error) {
	id := &agentv1.SandboxIdentity{SandboxId: s.cfg.ID}
	if o.Identity != nil {
		id = o.Identity
		if id.SandboxId == "" {
			id.SandboxId = s.cfg.ID
		}
	}
	o.Identity = id
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restoreLocked(ctx, "fork", o)
}

func (s *Sandbox) restoreLocked(ctx context.Context, op string, o RestoreOptions) (*RestoreReport, error) {
	caps := s.cfg.VMM.Capabilities()
	if !caps.Restore {
		return nil, vmm.Unsupported(caps.VMM, op+" from "+o.Path, caps.Why)
	}
	if o.Path == "" {
		return nil, status.Errorf(codes.InvalidArgument, "sandbox %s: %s: no snapshot path", s.cfg.ID, op)
	}
	gen := o.Generation
	if gen == 0 {
		g, err := s.cfg.Journal.Generation(s.cfg.ID)
		if err != nil {
			return nil, wrap(err, "sandbox %s: %s: journal", s.cfg.ID, op)
		}
		gen = g
	}
	if err := s.cfg.VMM.Restore(ctx, o.Path); err != nil {
		return nil, wrap(err, "sandbox %s: %s", s.cfg.ID, op)
	}
	s.state.Store(int32(Running))
	rep := &RestoreReport{Generation: gen}
	// Reconnect: the restored guest knows none of the old vsock links, so
	// drop ours now rather than wait for it to fail; the client redials.
	if d, ok := s.cfg.Agent.(Disconnecter); ok {
		d.Disconnect()
	}
	resp, rerr := s.resumeAgent(ctx, gen, o.Identity)
	rep.Resume = resp
	lost, jerr := s.cfg.Journal.RestoreGeneration(s.cfg.ID, gen)
	rep.Lost = lost
	s.log.Info(op, "generation", gen, "path", o.Path, "lost", len(lost), "resume_err", rerr, "journal_err", jerr)
	if jerr != nil {
		return rep, withCause(wrap(jerr, "sandbox %s: %s: restored generation %d, but the journal was not updated", s.cfg.ID, op, gen), rerr, "resume")
	}
	if rerr != nil {
		return rep, wrap(rerr, "sandbox %s: %s: restored generation %d, but the guest's resume failed", s.cfg.ID, op, gen)
	}
	return rep, nil
}

// resumeAgent sends the Resume RPC: host time, fresh entropy, generation.
func (s *Sandbox) resumeAgent(ctx context.Context, gen uint64, id *agentv1.SandboxIdentity) (*agentv1.ResumeResponse, error) {
	req, err := NewResumeRequest(gen, id)
	if err != nil {
		return nil, err
	}
	return s.cfg.Agent.Resume(ctx, req)
}

// NewResumeRequest builds a Resume request with the host's time now and
// EntropyBytes fresh bytes from crypto/rand.
func NewResumeRequest(gen uint64, id *agentv1.SandboxIdentity) (*agentv1.ResumeRequest, error) {
	ent := make([]byte, EntropyBytes)
	if _, err := rand.Read(ent); err != nil {
		return nil, status.Errorf(codes.Internal, "entropy for resume: %v", err)
	}
	return &agentv1.ResumeRequest{HostTimeUnixNano: time.Now().UnixNano(), Entropy: ent, Generation: gen, Identity: id}, nil
}

// Pause stops the VM until Resume. Execs and ingress do not wake it.
func (s *Sandbox) Pause(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.cfg.VMM.Pause(ctx); err != nil {
		return wrap(err, "sandbox %s: pause", s.cfg.ID)
	}
	s.state.Store(int32(Paused))
	s.log.Info("paused")
	return nil
}

// Sleep pauses the VM until Wake (the next exec or ingress) or Resume.
func (s *Sandbox) Sleep(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.State() == Paused {
		return status.Errorf(codes.FailedPrecondition, "sandbox %s: sleep: the sandbox is paused; resume it first", s.cfg.ID)
	}
	if err := s.cfg.VMM.Pause(ctx); err != nil {
		return wrap(err, "sandbox %s: sleep", s.cfg.ID)
	}
	s.state.Store(int32(Asleep))
	s.log.Info("asleep")
	return nil
}

// ResumeReport says what Resume did.
type ResumeReport struct {
	// Was is the state before.
	Was State
	// Agent is the guest's answer to the clock/entropy update (nil if that failed).
	Agent *agentv1.ResumeResponse
}

// Resume runs a paused or sleeping VM again and brings the guest's clock up
// to date (its clock stood still while paused) with fresh entropy. A
// failure of that update is returned, but the VM runs.
func (s *Sandbox) Resume(ctx context.Context) (*ResumeReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rep := &ResumeReport{Was: s.State()}
	resp, err := s.resumeLocked(ctx)
	rep.Agent = resp
	return rep, err
}

func (s *Sandbox) resumeLocked(ctx context.Context) (*agentv1.ResumeResponse, error) {
	if err := s.cfg.VMM.Resume(ctx); err != nil {
		return nil, wrap(err, "sandbox %s: resume", s.cfg.ID)
	}
	s.state.Store(int32(Running))
	gen, err := s.cfg.Journal.Generation(s.cfg.ID)
	if err != nil {
		return nil, wrap(err, "sandbox %s: resume: journal", s.cfg.ID)
	}
	resp, err := s.resumeAgent(ctx, gen, nil)
	if err != nil {
		return nil, wrap(err, "sandbox %s: resumed, but the guest's clock update failed", s.cfg.ID)
	}
	s.log.Info("resumed", "clock_offset", time.Duration(resp.ClockOffsetNs), "clock_stepped", resp.ClockStepped)
	return resp, nil
}

// Wake is what the daemon calls before forwarding an exec or ingress: a
// sleeping sandbox is resumed (once, however many callers wait), a running
// one returns at once, a paused one is FailedPrecondition (pause means
// until Resume). A failed clock update is logged, not returned: the exec
// can run.
func (s *Sandbox) Wake(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.awakeLocked(ctx, "wake")
}

func (s *Sandbox) awakeLocked(ctx context.Context, op string) error {
	switch s.State() {
	case Running:
		return nil
	case Paused:
		return status.Errorf(codes.FailedPrecondition, "sandbox %s: %s: the sandbox is paused; resume it first", s.cfg.ID, op)
	}
	if _, err := s.resumeLocked(ctx); err != nil {
		if s.State() != Running {
			return err
		}
		s.log.Warn("woke, but the guest's clock update failed", "err", err)
	}
	s.log.Info("woke", "by", op)
	return nil
}

// wrap prefixes err's message and keeps its gRPC code (Unknown for a plain
// error, Canceled/DeadlineExceeded for a context error).
func wrap(err error, format string, a ...any) error {
	prefix := fmt.Sprintf(format, a...)
	st, ok := status.FromError(err)
	if !ok {
		code := codes.Unknown
		if errors.Is(err, context.DeadlineExceeded) {
			code = codes.DeadlineExceeded
		} else if errors.Is(err, context.Canceled) {
			code = codes.Canceled
		}
		return status.Errorf(code, "%s: %v", prefix, err)
	}
	return status.Errorf(st.Code(), "%s: %s", prefix, st.Message())
}

// withCause appends a secondary failure (of a cleanup step) to err's message.
func withCause(err, cause error, step string) error {
	if cause == nil {
		return err
	}
	st, _ := status.FromError(err)
	return status.Errorf(st.Code(), "%s (and %s failed: %v)", st.Message(), step, cause)
}
