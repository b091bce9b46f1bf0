package cli

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/lifecycle"
	"github.com/sailbox/sailbox/host-supervisor/vmm"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The snapshot lifecycle verbs. freeze, thaw and (agent-only) resume talk to
// the agent; the VMM verbs need the VM's monitor: --qmp for QEMU. With
// --supervisor/--sandbox and no --qmp they are the daemon's lifecycle RPCs
// (the daemon holds the monitor given by `sandbox add --qmp`; only then can
// sleep wake on the next exec). With --supervisor/--sandbox and --qmp the
// command line drives the VM and the daemon journals the generation;
// otherwise it comes from --generation and is printed.

func init() {
	// --qmp may be left out with --supervisor/--sandbox: the daemon's VMM.
	const tgt = "(--agent ADDR | --supervisor S --sandbox ID)"
	register(&command{name: "freeze", usage: "[--cgroup DIR]... [--watchdog DUR] " + tgt,
		summary: "quiesce the guest's filesystems for a snapshot (thaws by itself after the watchdog)", run: runFreeze})
	register(&command{name: "thaw", usage: tgt, summary: "undo freeze", run: runThaw})
	register(&command{name: "checkpoint", usage: "[--qmp SOCK] [--path FILE] [--cgroup DIR]... [--generation G] " + tgt,
		summary: "freeze, snapshot the VM (or pause/resume it when the VMM cannot snapshot), thaw, bump the generation", run: runCheckpoint})
	register(&command{name: "restore", usage: "[--qmp SOCK] --path FILE [--generation G] " + tgt,
		summary: "restore the VM from a snapshot, resume the guest, mark later execs lost", run: runRestore})
	register(&command{name: "fork", usage: "[--qmp SOCK] --path FILE [--generation G] --hostname H [--sandbox-id ID] " + tgt,
		summary: "restore a snapshot into a new VM with a new identity", run: runFork})
	const daemonTgt = "(--qmp SOCK | --supervisor S --sandbox ID)"
	register(&command{name: "pause", usage: daemonTgt, summary: "pause the VM's vCPUs", run: runPause})
	register(&command{name: "sleep", usage: "--supervisor S --sandbox ID", summary: "pause until the next exec or ingress (the daemon wakes it; needs `sandbox add --qmp`)", run: runSleep})
	register(&command{name: "resume", usage: "[--qmp SOCK] [--generation G] [--hostname H] [--sandbox-id ID] " + tgt,
		summary: "resume a paused VM (--qmp) and bring the guest up to date: host time, fresh entropy, generation, identity", run: runResume})
}

// vmmTarget names the VM's monitor.
type vmmTarget struct{ qmp string }

func (v *vmmTarget) register(fs *flag.FlagSet) {
	fs.StringVar(&v.qmp, "qmp", os.Getenv("SAILBOX_QMP"), "QEMU's QMP unix socket (env SAILBOX_QMP)")
}

// dial connects to the monitor; the closer is never nil.
func (v *vmmTarget) dial(ctx context.Context) (vmm.VMM, func() error, error) {
	if v.qmp == "" {
		return nil, func() error { return nil }, invalid("no VMM: give --qmp /path/to/qmp.sock")
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	q, closeQ, err := vmm.DialQEMU(dctx, strings.TrimPrefix(v.qmp, "unix://"))
	if err != nil {
		return nil, func() error { return nil }, err
	}
	return q, closeQ, nil
}

// lifecycleFlags are the flags shared by the lifecycle verbs.
type lifecycleFlags struct {
	target
	vmm        vmmTarget
	generation uint64
	path       string
	cgroups    stringList
	hostname   string
	sandboxID  string
	timeout    time.Duration
}

func (f *lifecycleFlags) parse(name string, args []string, with func(fs *flag.FlagSet)) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	f.target.register(fs)
	fs.DurationVar(&f.timeout, "timeout", 2*time.Minute, "give up after this long")
	if with != nil {
		with(fs)
	}
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return invalid("%s: unexpected arguments %q", name, pos)
	}
	return nil
}

func (f *lifecycleFlags) withVMM(fs *flag.FlagSet) { f.vmm.register(fs) }

// viaDaemon: the daemon runs the verb on the VM it holds (a supervisor's
// sandbox and no --qmp of our own).
func (f *lifecycleFlags) viaDaemon() bool { return f.viaSupervisor() && f.vmm.qmp == "" }

// daemonCall runs one lifecycle RPC, once: a checkpoint or restore is not
// repeated after a broken link (it could run twice).
func (f *lifecycleFlags) daemonCall(ctx context.Context, call func(supervisorv1.SupervisorClient) error) error {
	if f.sandbox == "" {
		return invalid("--supervisor needs --sandbox ID")
	}
	sc, err := newSupervisorClient(f.supervisor)
	if err != nil {
		return err
	}
	defer sc.Close()
	api, _, err := sc.get(ctx)
	if err != nil {
		return err
	}
	return call(api)
}
func (f *lifecycleFlags) withGeneration(fs *flag.FlagSet) {
	fs.Uint64Var(&f.generation, "generation", 0, "checkpoint generation (without --supervisor: the current one; with: default the journalled one)")
}
func (f *lifecycleFlags) withPath(fs *flag.FlagSet) {
	fs.StringVar(&f.path, "path", "", "snapshot file")
}
func (f *lifecycleFlags) withCgroups(fs *flag.FlagSet) {
	fs.Var(&f.cgroups, "cgroup", "cgroup v2 directory in the guest to freeze too (repeatable)")
}
func (f *lifecycleFlags) withIdentity(fs *flag.FlagSet) {
	fs.StringVar(&f.hostname, "hostname", "", "new hostname of the guest")
	fs.StringVar(&f.sandboxID, "sandbox-id", "", "new sandbox id told to the guest")
}

func (f *lifecycleFlags) identity() *agentv1.SandboxIdentity {
	if f.hostname == "" && f.sandboxID == "" {
		return nil
	}
	return &agentv1.SandboxIdentity{Hostname: f.hostname, SandboxId: f.sandboxID}
}

// journal is the daemon's when the target is a supervisor's sandbox, else
// an in-memory one starting at --generation.
func (f *lifecycleFlags) journal() (lifecycle.Journal, string, func(), error) {
	if f.viaSupervisor() {
		if f.sandbox == "" {
			return nil, "", nil, invalid("--supervisor needs --sandbox ID")
		}
		sc, err := newSupervisorClient(f.supervisor)
		if err != nil {
			return nil, "", nil, err
		}
		return supervisorJournal{sc, f.timeout}, f.sandbox, func() { sc.Close() }, nil
	}
	return lifecycle.NewMemJournal("sandbox", f.generation), "sandbox", func() {}, nil
}

// sandbox assembles the lifecycle of the target.
func (f *lifecycleFlags) lifecycle(ctx context.Context, stdio Stdio, needVMM bool) (*lifecycle.Sandbox, *agentclient.Client, func(), error) {
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	agent, err := f.agentClient()
	if err != nil {
		return nil, nil, cleanup, err
	}
	undo = append(undo, func() { agent.Close() })
	j, id, closeJ, err := f.journal()
	if err != nil {
		return nil, nil, cleanup, err
	}
	undo = append(undo, closeJ)
	var m vmm.VMM = noVMM{}
	if needVMM {
		q, closeQ, err := f.vmm.dial(ctx)
		if err != nil {
			return nil, nil, cleanup, err
		}
		undo = append(undo, func() { closeQ() })
		m = q
	}
	sb := lifecycle.New(lifecycle.Config{ID: id, Agent: agent, VMM: m, Journal: j, Logger: slog.New(slog.NewTextHandler(stdio.Err, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	return sb, agent, cleanup, nil
}

// noVMM stands in when no monitor was named.
type noVMM struct{}

func (noVMM) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{VMM: "none", Why: "no VMM given (--qmp)"}
}
func (noVMM) Pause(context.Context) error  { return invalid("no VMM: give --qmp /path/to/qmp.sock") }
func (noVMM) Resume(context.Context) error { return invalid("no VMM: give --qmp /path/to/qmp.sock") }
func (noVMM) Snapshot(context.Context, string) error {
	return invalid("no VMM: give --qmp /path/to/qmp.sock")
}
func (noVMM) Restore(context.Context, string) error {
	return invalid("no VMM: give --qmp /path/to/qmp.sock")
}

func runFreeze(ctx context.Context, stdio Stdio, args []string) int {
	var f lifecycleFlags
	var watchdog time.Duration
	if err := f.parse("freeze", args, func(fs *flag.FlagSet) {
		f.withCgroups(fs)
		fs.DurationVar(&watchdog, "watchdog", 0, "thaw by itself after this long without a thaw (default: the agent's, 60s)")
	}); err != nil {
		return fail(stdio, err)
	}
	c, err := f.agentClient()
	if err != nil {
		return fail(stdio, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	r, err := c.Freeze(ctx, &agentv1.FreezeRequest{Cgroups: f.cgroups, WatchdogMs: watchdog.Milliseconds()})
	if err != nil {
		return fail(stdio, err)
	}
	if r.AlreadyFrozen {
		fmt.Fprintln(stdio.Out, "already frozen (watchdog re-armed)")
	}
	fmt.Fprintf(stdio.Out, "frozen: %s\n", list(r.Frozen))
	for _, s := range r.Skipped {
		fmt.Fprintf(stdio.Out, "skipped: %s (%s): %s\n", s.MountPoint, s.FsType, s.Reason)
	}
	if len(r.Cgroups) > 0 {
		fmt.Fprintf(stdio.Out, "cgroups: %s\n", list(r.Cgroups))
	}
	if r.WatchdogDeadlineUnixNano != 0 {
		fmt.Fprintf(stdio.Out, "watchdog thaws at %s\n", time.Unix(0, r.WatchdogDeadlineUnixNano).UTC().Format(time.RFC3339))
	}
	return 0
}

func runThaw(ctx context.Context, stdio Stdio, args []string) int {
	var f lifecycleFlags
	if err := f.parse("thaw", args, nil); err != nil {
		return fail(stdio, err)
	}
	c, err := f.agentClient()
	if err != nil {
		return fail(stdio, err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	r, err := c.Thaw(ctx, &agentv1.ThawRequest{})
	if err != nil {
		return fail(stdio, err)
	}
	if !r.WasFrozen {
		fmt.Fprintln(stdio.Out, "was not frozen")
	} else {
		fmt.Fprintf(stdio.Out, "thawed: %s (frozen for %v)\n", list(r.Thawed), time.Duration(r.FrozenForNs).Round(time.Millisecond))
	}
	for _, w := range r.Warnings {
		fmt.Fprintf(stdio.Err, "warning: %s\n", w)
	}
	return 0
}

func runCheckpoint(ctx context.Context, stdio Stdio, args []string) int {
	var f lifecycleFlags
	if err := f.parse("checkpoint", args, func(fs *flag.FlagSet) {
		f.withVMM(fs)
		f.withPath(fs)
		f.withCgroups(fs)
		f.withGeneration(fs)
	}); err != nil {
		return fail(stdio, err)
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	if f.viaDaemon() {
		var r *supervisorv1.CheckpointResponse
		err := f.daemonCall(ctx, func(api supervisorv1.SupervisorClient) (err error) {
			r, err = api.Checkpoint(ctx, &supervisorv1.CheckpointRequest{Sandbox: f.sandbox, Path: f.path, Cgroups: f.cgroups})
			return err
		})
		if err != nil {
			return fail(stdio, err)
		}
		printCheckpoint(stdio, &lifecycle.CheckpointReport{
			Generation: r.Generation, Snapshot: r.Snapshot, Paused: r.Paused, Frozen: r.Frozen,
			Freeze: time.Duration(r.FreezeNs), VMM: time.Duration(r.VmmNs), Thaw: time.Duration(r.ThawNs),
		})
		return 0
	}
	sb, _, cleanup, err := f.lifecycle(ctx, stdio, true)
	defer cleanup()
	if err != nil {
		return fail(stdio, err)
	}
	rep, err := sb.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: f.path, Cgroups: f.cgroups})
	printCheckpoint(stdio, rep)
	if err != nil {
		return fail(stdio, err)
	}
	return 0
}

func printCheckpoint(stdio Stdio, rep *lifecycle.CheckpointReport) {
	if rep != nil {
		fmt.Fprintf(stdio.Out, "checkpoint generation %d\n", rep.Generation)
		if rep.Snapshot != "" {
			fmt.Fprintf(stdio.Out, "snapshot: %s\n", rep.Snapshot)
		} else if rep.Paused {
			fmt.Fprintln(stdio.Out, "no snapshot file: the VMM cannot snapshot this VM; it was paused and resumed while frozen")
		}
		fmt.Fprintf(stdio.Out, "frozen: %s; freeze %v, vmm %v, thaw %v\n", list(rep.Frozen),
			rep.Freeze.Round(time.Microsecond), rep.VMM.Round(time.Microsecond), rep.Thaw.Round(time.Microsecond))
	}
}

func runRestore(ctx context.Context, stdio Stdio, args []string) int {
	return restoreOrFork(ctx, stdio, "restore", args)
}

func runFork(ctx context.Context, stdio Stdio, args []string) int {
	return restoreOrFork(ctx, stdio, "fork", args)
}

func restoreOrFork(ctx context.Context, stdio Stdio, op string, args []string) int {
	var f lifecycleFlags
	if err := f.parse(op, args, func(fs *flag.FlagSet) {
		f.withVMM(fs)
		f.withPath(fs)
		f.withGeneration(fs)
		if op == "fork" {
			f.withIdentity(fs)
		}
	}); err != nil {
		return fail(stdio, err)
	}
	if f.path == "" {
		return fail(stdio, invalid("%s: give --path FILE", op))
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	if f.viaDaemon() {
		var r *supervisorv1.RestoreResponse
		err := f.daemonCall(ctx, func(api supervisorv1.SupervisorClient) (err error) {
			req := &supervisorv1.RestoreRequest{Sandbox: f.sandbox, Path: f.path, Generation: f.generation, Identity: f.identity()}
			if op == "fork" {
				r, err = api.Fork(ctx, req)
			} else {
				r, err = api.Restore(ctx, req)
			}
			return err
		})
		if err != nil {
			return fail(stdio, err)
		}
		printRestore(stdio, op, &lifecycle.RestoreReport{Generation: r.Generation, Lost: r.Lost, Resume: r.Resume})
		return 0
	}
	sb, _, cleanup, err := f.lifecycle(ctx, stdio, true)
	defer cleanup()
	if err != nil {
		return fail(stdio, err)
	}
	o := lifecycle.RestoreOptions{Path: f.path, Generation: f.generation, Identity: f.identity()}
	var rep *lifecycle.RestoreReport
	if op == "fork" {
		rep, err = sb.Fork(ctx, o)
	} else {
		rep, err = sb.Restore(ctx, o)
	}
	printRestore(stdio, op, rep)
	if err != nil {
		return fail(stdio, err)
	}
	return 0
}

func printRestore(stdio Stdio, op string, rep *lifecycle.RestoreReport) {
	if rep == nil {
		return
	}
	fmt.Fprintf(stdio.Out, "%s: generation %d\n", op, rep.Generation)
	for _, id := range rep.Lost {
		fmt.Fprintf(stdio.Out, "lost: %s (not replayed)\n", id)
	}
	printResume(stdio, rep.Resume)
}

func runPause(ctx context.Context, stdio Stdio, args []string) int {
	return vmmOnly(ctx, stdio, "pause", args, func(ctx context.Context, m vmm.VMM) error { return m.Pause(ctx) })
}

// runSleep is the daemon's Sleep: waking on the next exec or ingress needs
// a process that sees them. A command line with only --qmp can only pause.
func runSleep(ctx context.Context, stdio Stdio, args []string) int {
	var f lifecycleFlags
	if err := f.parse("sleep", args, f.withVMM); err != nil {
		return fail(stdio, err)
	}
	if !f.viaDaemon() {
		return fail(stdio, status.Error(codes.FailedPrecondition,
			"sleep: waking on the next exec or ingress needs the supervisor daemon to hold the VM's monitor: `sandbox add --qmp SOCK`, then sleep --supervisor S --sandbox ID; or use pause and resume"))
	}
	return daemonState(ctx, stdio, &f, "sleep")
}

// daemonState runs the daemon's Pause or Sleep and prints the new state.
func daemonState(ctx context.Context, stdio Stdio, f *lifecycleFlags, name string) int {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	var r *supervisorv1.LifecycleState
	err := f.daemonCall(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		ref := &supervisorv1.SandboxRef{Id: f.sandbox}
		if name == "sleep" {
			r, err = api.Sleep(ctx, ref)
		} else {
			r, err = api.Pause(ctx, ref)
		}
		return err
	})
	if err != nil {
		return fail(stdio, err)
	}
	fmt.Fprintf(stdio.Out, "%s: done (sandbox %s %s)\n", name, r.Sandbox, r.State)
	return 0
}

func vmmOnly(ctx context.Context, stdio Stdio, name string, args []string, op func(context.Context, vmm.VMM) error) int {
	var f lifecycleFlags
	if err := f.parse(name, args, f.withVMM); err != nil {
		return fail(stdio, err)
	}
	if f.viaDaemon() {
		return daemonState(ctx, stdio, &f, name)
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	m, closeM, err := f.vmm.dial(ctx)
	defer closeM()
	if err != nil {
		return fail(stdio, err)
	}
	if err := op(ctx, m); err != nil {
		return fail(stdio, err)
	}
	fmt.Fprintf(stdio.Out, "%s: done\n", name)
	return 0
}

// runResume resumes the VM (with --qmp) and then sends the agent a Resume
// (host time, fresh entropy, generation, optional identity); with only an
// agent target it just does the latter.
func runResume(ctx context.Context, stdio Stdio, args []string) int {
	var f lifecycleFlags
	if err := f.parse("resume", args, func(fs *flag.FlagSet) {
		f.withVMM(fs)
		f.withGeneration(fs)
		f.withIdentity(fs)
	}); err != nil {
		return fail(stdio, err)
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	if f.viaDaemon() && f.generation == 0 && f.identity() == nil {
		var r *supervisorv1.ResumeResponse
		err := f.daemonCall(ctx, func(api supervisorv1.SupervisorClient) (err error) {
			r, err = api.Resume(ctx, &supervisorv1.SandboxRef{Id: f.sandbox})
			return err
		})
		if err != nil {
			return fail(stdio, err)
		}
		fmt.Fprintf(stdio.Out, "vm resumed (was %s)\n", r.Was)
		printResume(stdio, r.Agent)
		return 0
	}
	if f.vmm.qmp != "" {
		m, closeM, err := f.vmm.dial(ctx)
		defer closeM()
		if err != nil {
			return fail(stdio, err)
		}
		if err := m.Resume(ctx); err != nil {
			return fail(stdio, err)
		}
		fmt.Fprintln(stdio.Out, "vm resumed")
		if f.agent == "" && f.supervisor == "" {
			return 0
		}
	}
	c, err := f.agentClient()
	if err != nil {
		return fail(stdio, err)
	}
	defer c.Close()
	gen := f.generation
	if f.viaSupervisor() && gen == 0 {
		j, id, closeJ, err := f.journal()
		if err != nil {
			return fail(stdio, err)
		}
		gen, err = j.Generation(id)
		closeJ()
		if err != nil {
			return fail(stdio, err)
		}
	}
	req, err := lifecycle.NewResumeRequest(gen, f.identity())
	if err != nil {
		return fail(stdio, err)
	}
	resp, err := c.Resume(ctx, req)
	if err != nil {
		return fail(stdio, err)
	}
	printResume(stdio, resp)
	return 0
}

func printResume(stdio Stdio, r *agentv1.ResumeResponse) {
	if r == nil {
		return
	}
	stepped := ""
	if r.ClockStepped {
		stepped = " (stepped to host time)"
	}
	fmt.Fprintf(stdio.Out, "guest: generation %d (was %d), clock off by %v%s, %d entropy bytes, crng reseeded %v\n",
		r.Generation, r.PreviousGeneration, time.Duration(r.ClockOffsetNs).Round(time.Millisecond), stepped, r.EntropyBytes, r.CrngReseeded)
	if r.Hostname != "" {
		fmt.Fprintf(stdio.Out, "hostname: %s\n", r.Hostname)
	}
	if r.SandboxId != "" {
		fmt.Fprintf(stdio.Out, "sandbox id: %s\n", r.SandboxId)
	}
	if r.ConnectionsDropped > 0 {
		fmt.Fprintf(stdio.Out, "tcp connections dropped: %d\n", r.ConnectionsDropped)
	}
}

func list(xs []string) string {
	if len(xs) == 0 {
		return "(none)"
	}
	return strings.Join(xs, " ")
}

// supervisorJournal is lifecycle.Journal over the daemon's control API.
type supervisorJournal struct {
	c       *supervisorClient
	timeout time.Duration
}

func (s supervisorJournal) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.timeout)
}

func (s supervisorJournal) Generation(id string) (uint64, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	var resp *supervisorv1.ListSandboxesResponse
	err := s.c.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		resp, err = api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{})
		return err
	})
	if err != nil {
		return 0, err
	}
	for _, sb := range resp.Sandboxes {
		if sb.Id == id {
			return sb.Generation, nil
		}
	}
	return 0, status.Errorf(codes.NotFound, "sandbox %s not found", id)
}

// BumpGeneration records checkpoint current+1 (the daemon refuses a
// generation that is not after its current one, so a race cannot go back).
func (s supervisorJournal) BumpGeneration(id string) (uint64, error) {
	cur, err := s.Generation(id)
	if err != nil {
		return 0, err
	}
	ctx, cancel := s.ctx()
	defer cancel()
	var sb *supervisorv1.Sandbox
	err = s.c.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		sb, err = api.Checkpointed(ctx, &supervisorv1.GenerationRequest{Sandbox: id, Generation: cur + 1})
		return err
	})
	if err != nil {
		return 0, err
	}
	return sb.Generation, nil
}

func (s supervisorJournal) RestoreGeneration(id string, gen uint64) ([]string, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	var r *supervisorv1.RestoreGenerationResponse
	err := s.c.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		r, err = api.RestoreGeneration(ctx, &supervisorv1.GenerationRequest{Sandbox: id, Generation: gen})
		return err
	})
	if err != nil {
		return nil, err
	}
	return r.Lost, nil
}
