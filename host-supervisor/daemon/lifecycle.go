package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/lifecycle"
	"github.com/sailbox/sailbox/host-supervisor/sandbox"
	"github.com/sailbox/sailbox/host-supervisor/vmm"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DialVMM connects to a sandbox's VM monitor; the closer is called when the
// sandbox is removed, re-attached or the daemon closes.
type DialVMM func(ctx context.Context, sandbox, qmp string) (vmm.VMM, func() error, error)

// dialQEMU is the default DialVMM: QEMU over its QMP socket.
func dialQEMU(ctx context.Context, sandbox, qmp string) (vmm.VMM, func() error, error) {
	q, closeQ, err := vmm.DialQEMU(ctx, qmp)
	if err != nil {
		return nil, nil, err
	}
	return q, closeQ, nil
}

// vmmDialTimeout bounds connecting to a VM's monitor in AddSandbox.
const vmmDialTimeout = 10 * time.Second

// attachedVMM is a sandbox's monitor connection.
type attachedVMM struct {
	qmp   string
	close func() error
}

// AddSandboxVMM registers a sandbox (AddSandbox) with its VM's monitor at
// qmp: the lifecycle verbs then work on it, and a sleeping VM is woken by
// the next call that reaches its agent. The monitor is connected first: a
// monitor that cannot be reached registers nothing (FailedPrecondition).
// Adding again with the same qmp keeps the current lifecycle (and its run
// state); another qmp replaces it; an empty one leaves it as it is.
func (d *Daemon) AddSandboxVMM(ctx context.Context, id, agent string, labels map[string]string, qmp string) (*supervisorv1.Sandbox, error) {
	if qmp == "" {
		p, err := d.AddSandbox(id, agent, labels)
		if err == nil {
			p.State = d.runState(id)
		}
		return p, err
	}
	d.vmmMu.Lock()
	defer d.vmmMu.Unlock()
	var m vmm.VMM
	var closeM func() error
	if old, ok := d.vmms[id]; !ok || old.qmp != qmp {
		dctx, cancel := context.WithTimeout(ctx, vmmDialTimeout)
		var err error
		m, closeM, err = d.cfg.DialVMM(dctx, id, qmp)
		cancel()
		if err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "sandbox %s: vmm at %s: %s", id, qmp, status.Convert(err).Message())
		}
	}
	p, err := d.AddSandbox(id, agent, labels)
	if err != nil {
		if closeM != nil {
			closeM()
		}
		return nil, err
	}
	if m != nil {
		sb, err := d.reg.Get(id)
		if err != nil {
			closeM()
			return nil, err
		}
		d.attachLocked(sb, qmp, m, closeM, lifecycle.Running)
		if err := d.saveVMMsLocked(); err != nil {
			return nil, err
		}
	}
	p.State = d.runState(id)
	return p, nil
}

// attachLocked makes m the VMM of sandbox sb, in run state st.
func (d *Daemon) attachLocked(sb *sandbox.Sandbox, qmp string, m vmm.VMM, closeM func() error, st lifecycle.State) {
	d.detachLocked(sb.ID)
	d.vmms[sb.ID] = attachedVMM{qmp: qmp, close: closeM}
	d.lc.Add(lifecycle.New(lifecycle.Config{
		ID: sb.ID, Agent: sb.Client, VMM: m, Journal: lifecycle.DaemonJournal{D: d}, State: st, Logger: d.log,
	}))
	d.log.Info("vmm attached", "sandbox", sb.ID, "qmp", qmp, "state", st.String(), "capabilities", m.Capabilities().String())
}

// vmmsFile journals which sandbox has which monitor and its run state, so
// a restarted daemon re-attaches them: a sleeping VM must still wake on the
// next exec, a paused one still refuse it.
const vmmsFile = "vmms.json"

type vmmEntry struct {
	QMP   string `json:"qmp"`
	State string `json:"state"`
}

// saveVMMsLocked writes the monitors and run states (temp file, fsync,
// rename: a crash leaves the old or the new file).
func (d *Daemon) saveVMMsLocked() error {
	m := map[string]vmmEntry{}
	for id, a := range d.vmms {
		m[id] = vmmEntry{QMP: a.qmp, State: d.runState(id)}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(d.cfg.StateDir, vmmsFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return status.Errorf(codes.Internal, "vmm journal %s: %v", tmp, err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return status.Errorf(codes.Internal, "vmm journal %s: %v", path, err)
	}
	return nil
}

// saveVMMs journals the run states after a lifecycle operation; a failure
// is logged (the operation itself happened).
func (d *Daemon) saveVMMs() {
	d.vmmMu.Lock()
	defer d.vmmMu.Unlock()
	if err := d.saveVMMsLocked(); err != nil {
		d.log.Error("journalling vmm states", "err", err)
	}
}

// loadVMMs re-attaches the journalled monitors of registered sandboxes,
// all at once (each dial bounded by vmmDialTimeout). A monitor that cannot
// be reached is logged and dropped: that sandbox has no VMM until it is
// added again with its qmp.
func (d *Daemon) loadVMMs() error {
	b, err := os.ReadFile(filepath.Join(d.cfg.StateDir, vmmsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var m map[string]vmmEntry
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("vmm journal %s: %w", vmmsFile, err)
	}
	type dialed struct {
		sb     *sandbox.Sandbox
		e      vmmEntry
		v      vmm.VMM
		closeV func() error
	}
	var wg sync.WaitGroup
	got := make(chan dialed, len(m))
	for id, e := range m {
		sb, err := d.reg.Get(id)
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(d.ctx, vmmDialTimeout)
			defer cancel()
			v, closeV, err := d.cfg.DialVMM(ctx, id, e.QMP)
			if err != nil {
				d.log.Error("vmm not re-attached", "sandbox", id, "qmp", e.QMP, "state", e.State, "err", err)
				return
			}
			got <- dialed{sb, e, v, closeV}
		}()
	}
	wg.Wait()
	close(got)
	d.vmmMu.Lock()
	defer d.vmmMu.Unlock()
	for x := range got {
		st := lifecycle.Running
		switch x.e.State {
		case lifecycle.Paused.String():
			st = lifecycle.Paused
		case lifecycle.Asleep.String():
			st = lifecycle.Asleep
		}
		d.attachLocked(x.sb, x.e.QMP, x.v, x.closeV, st)
	}
	return d.saveVMMsLocked()
}

// detachLocked forgets a sandbox's VMM and closes its monitor connection.
func (d *Daemon) detachLocked(id string) {
	d.lc.Remove(id)
	if a, ok := d.vmms[id]; ok {
		delete(d.vmms, id)
		if a.close != nil {
			a.close()
		}
	}
}

func (d *Daemon) detachAll() {
	d.vmmMu.Lock()
	defer d.vmmMu.Unlock()
	for id, a := range d.vmms {
		// The journal stays: the next Open re-attaches.
		d.lc.Remove(id)
		delete(d.vmms, id)
		if a.close != nil {
			a.close()
		}
	}
}

// wake wakes a sleeping sandbox before a call is forwarded to its agent.
func (d *Daemon) wake(ctx context.Context, sandbox string) error {
	asleep := d.runState(sandbox) == lifecycle.Asleep.String()
	err := d.lc.Wake(ctx, sandbox)
	if asleep {
		d.saveVMMs()
	}
	return err
}

// lifecycleOf returns a sandbox's lifecycle: NotFound for an unknown
// sandbox, FailedPrecondition for one without a VMM.
func (d *Daemon) lifecycleOf(id string) (*lifecycle.Sandbox, error) {
	if _, err := d.reg.Get(id); err != nil {
		return nil, err
	}
	s, err := d.lc.Get(id)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "sandbox %s: no VMM attached; add the sandbox with its monitor (qmp) for lifecycle operations", id)
	}
	return s, nil
}

// runState is the sandbox's run state for the API ("" without a VMM).
func (d *Daemon) runState(id string) string {
	s, err := d.lc.Get(id)
	if err != nil {
		return ""
	}
	return s.State().String()
}

// Checkpoint takes a checkpoint of the sandbox (lifecycle.Sandbox.Checkpoint).
func (d *Daemon) Checkpoint(ctx context.Context, req *supervisorv1.CheckpointRequest) (*supervisorv1.CheckpointResponse, error) {
	s, err := d.lifecycleOf(req.Sandbox)
	if err != nil {
		return nil, err
	}
	rep, err := s.Checkpoint(ctx, lifecycle.CheckpointOptions{Path: req.Path, Cgroups: req.Cgroups})
	d.saveVMMs() // a checkpoint wakes a sleeping sandbox
	if err != nil {
		// A report with an error (taken, but the thaw failed): the message names the generation.
		return nil, err
	}
	return &supervisorv1.CheckpointResponse{
		Generation: rep.Generation, Snapshot: rep.Snapshot, Paused: rep.Paused, Frozen: rep.Frozen,
		FreezeNs: rep.Freeze.Nanoseconds(), VmmNs: rep.VMM.Nanoseconds(), ThawNs: rep.Thaw.Nanoseconds(),
		QuiescedNs: rep.Quiesced.Nanoseconds(),
	}, nil
}

// Restore restores the sandbox from a checkpoint (lifecycle.Sandbox.Restore).
func (d *Daemon) Restore(ctx context.Context, req *supervisorv1.RestoreRequest) (*supervisorv1.RestoreResponse, error) {
	return d.restore(ctx, req, false)
}

// Fork restores a checkpoint into the sandbox with a new identity (lifecycle.Sandbox.Fork).
func (d *Daemon) Fork(ctx context.Context, req *supervisorv1.RestoreRequest) (*supervisorv1.RestoreResponse, error) {
	return d.restore(ctx, req, true)
}

func (d *Daemon) restore(ctx context.Context, req *supervisorv1.RestoreRequest, fork bool) (*supervisorv1.RestoreResponse, error) {
	s, err := d.lifecycleOf(req.Sandbox)
	if err != nil {
		return nil, err
	}
	o := lifecycle.RestoreOptions{Path: req.Path, Generation: req.Generation, Identity: req.Identity}
	var rep *lifecycle.RestoreReport
	if fork {
		rep, err = s.Fork(ctx, o)
	} else {
		if req.Identity != nil {
			return nil, status.Errorf(codes.InvalidArgument, "sandbox %s: restore keeps the identity; use fork for a new one", req.Sandbox)
		}
		rep, err = s.Restore(ctx, o)
	}
	d.saveVMMs() // running again, whatever else failed
	if err != nil {
		return nil, err
	}
	return &supervisorv1.RestoreResponse{Generation: rep.Generation, Lost: rep.Lost, Resume: rep.Resume}, nil
}

// Pause pauses the sandbox's VM until Resume.
func (d *Daemon) Pause(ctx context.Context, id string) (*supervisorv1.LifecycleState, error) {
	s, err := d.lifecycleOf(id)
	if err != nil {
		return nil, err
	}
	if err := s.Pause(ctx); err != nil {
		return nil, err
	}
	d.saveVMMs()
	return &supervisorv1.LifecycleState{Sandbox: id, State: s.State().String()}, nil
}

// Sleep pauses the sandbox's VM until the next call that reaches its agent.
func (d *Daemon) Sleep(ctx context.Context, id string) (*supervisorv1.LifecycleState, error) {
	s, err := d.lifecycleOf(id)
	if err != nil {
		return nil, err
	}
	if err := s.Sleep(ctx); err != nil {
		return nil, err
	}
	d.saveVMMs()
	return &supervisorv1.LifecycleState{Sandbox: id, State: s.State().String()}, nil
}

// Resume runs a paused or sleeping VM and updates the guest's clock.
func (d *Daemon) Resume(ctx context.Context, id string) (*supervisorv1.ResumeResponse, error) {
	s, err := d.lifecycleOf(id)
	if err != nil {
		return nil, err
	}
	rep, err := s.Resume(ctx)
	d.saveVMMs()
	if err != nil {
		return nil, err
	}
	return &supervisorv1.ResumeResponse{Was: rep.Was.String(), Agent: rep.Agent}, nil
}
