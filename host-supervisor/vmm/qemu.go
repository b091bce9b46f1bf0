package vmm

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sailbox/sailbox/host-supervisor/vm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// QMP is what the QEMU VMM needs from the machine protocol (*vm.QMP).
type QMP interface {
	Stop(ctx context.Context) error
	Cont(ctx context.Context) error
	QueryStatus(ctx context.Context) (vm.Status, error)
	Execute(ctx context.Context, cmd string, args any) (json.RawMessage, error)
}

var _ QMP = (*vm.QMP)(nil)

// QEMUNoSnapshot is why a sailbox QEMU VM cannot be snapshotted: QEMU
// marks vhost-user-vsock unmigratable (its state lives in the backend), and
// snapshot/restore is migration to and from a file.
const QEMUNoSnapshot = "the VM has a vhost-user-vsock device, which QEMU cannot migrate (snapshot and restore are migration); pause and resume work"

// QEMU drives a QEMU VM through QMP: pause is `stop`, resume is `cont`.
type QEMU struct {
	name string
	q    QMP
}

var _ VMM = (*QEMU)(nil)

// NewQEMU returns the VMM of the QEMU VM reached through q; name is for
// messages (the VM name or its QMP socket).
func NewQEMU(name string, q QMP) *QEMU { return &QEMU{name: name, q: q} }

// DialQEMU connects to a QEMU's QMP unix socket (retrying until ctx ends).
// Close the returned closer when done.
func DialQEMU(ctx context.Context, qmpSocket string) (*QEMU, func() error, error) {
	q, err := vm.DialQMP(ctx, qmpSocket)
	if err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "vmm qemu: %v", err)
	}
	return NewQEMU(qmpSocket, q), q.Close, nil
}

func (v *QEMU) who() string { return fmt.Sprintf("qemu (%s)", v.name) }

// Capabilities: pause and resume only.
func (v *QEMU) Capabilities() Capabilities {
	return Capabilities{VMM: "qemu", Pause: true, Resume: true, Why: "no snapshot/restore: " + QEMUNoSnapshot}
}

// Pause stops the vCPUs (QMP stop) and checks QEMU reports "paused".
func (v *QEMU) Pause(ctx context.Context) error {
	if err := v.q.Stop(ctx); err != nil {
		return opError(v.who(), "pause (stop)", err)
	}
	st, err := v.q.QueryStatus(ctx)
	if err != nil {
		return opError(v.who(), "pause (query-status)", err)
	}
	if st.Running {
		return status.Errorf(codes.Internal, "vmm %s: pause: still running after stop (status %q)", v.who(), st.Status)
	}
	return nil
}

// Resume lets the vCPUs run (QMP cont) and checks QEMU reports running. A
// VM that has shut down cannot be resumed: FailedPrecondition.
func (v *QEMU) Resume(ctx context.Context) error {
	if st, err := v.q.QueryStatus(ctx); err == nil && (st.Status == "shutdown" || st.Status == "internal-error" || st.Status == "guest-panicked") {
		return status.Errorf(codes.FailedPrecondition, "vmm %s: resume: the VM is in state %q", v.who(), st.Status)
	}
	if err := v.q.Cont(ctx); err != nil {
		return opError(v.who(), "resume (cont)", err)
	}
	st, err := v.q.QueryStatus(ctx)
	if err != nil {
		return opError(v.who(), "resume (query-status)", err)
	}
	if !st.Running {
		return status.Errorf(codes.Internal, "vmm %s: resume: not running after cont (status %q)", v.who(), st.Status)
	}
	return nil
}

// Status returns QEMU's run state ("running", "paused", ...).
func (v *QEMU) Status(ctx context.Context) (vm.Status, error) {
	st, err := v.q.QueryStatus(ctx)
	return st, opError(v.who(), "query-status", err)
}

// MigrationBlockers returns QEMU's own reasons why this VM cannot be
// migrated, i.e. snapshotted (query-migrate's blocked-reasons, QEMU >= 6.0;
// empty when nothing blocks).
func (v *QEMU) MigrationBlockers(ctx context.Context) ([]string, error) {
	raw, err := v.q.Execute(ctx, "query-migrate", nil)
	if err != nil {
		return nil, opError(v.who(), "query-migrate", err)
	}
	var info struct {
		BlockedReasons []string `json:"blocked-reasons"`
	}
	if err := json.Unmarshal(raw, &info); err != nil {
		return nil, status.Errorf(codes.Internal, "vmm %s: query-migrate: %v", v.who(), err)
	}
	return info.BlockedReasons, nil
}

// unsupported adds QEMU's blockers to the reason when it can get them.
func (v *QEMU) unsupported(ctx context.Context, op string) error {
	why := QEMUNoSnapshot
	if v.q != nil {
		if b, err := v.MigrationBlockers(ctx); err == nil && len(b) > 0 {
			why += "; QEMU says: " + strings.Join(b, "; ")
		}
	}
	return Unsupported(v.who(), op, why)
}

// Snapshot is not supported (see QEMUNoSnapshot).
func (v *QEMU) Snapshot(ctx context.Context, path string) error {
	return v.unsupported(ctx, "snapshot to "+path)
}

// Restore is not supported (see QEMUNoSnapshot).
func (v *QEMU) Restore(ctx context.Context, path string) error {
	return v.unsupported(ctx, "restore from "+path)
}
