package vmm

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// VMM controls one running VM.
type VMM interface {
	// Capabilities says which operations this VMM offers for this VM.
	Capabilities() Capabilities
	// Pause stops the vCPUs; pausing a paused VM is harmless.
	Pause(ctx context.Context) error
	// Resume lets the vCPUs run again; resuming a running VM is harmless.
	Resume(ctx context.Context) error
	// Snapshot writes the VM's state (memory and devices) to path; the VM
	// keeps running afterwards. Unsupported: codes.Unimplemented.
	Snapshot(ctx context.Context, path string) error
	// Restore loads the state written by Snapshot into this VMM and runs
	// it. Unsupported: codes.Unimplemented.
	Restore(ctx context.Context, path string) error
}

// Capabilities are the operations a VMM offers for one VM.
type Capabilities struct {
	// VMM names the monitor ("qemu", "firecracker", "fake", ...).
	VMM           string
	Pause, Resume bool
	Snapshot      bool
	Restore       bool
	// Why says why an operation is missing (empty when all are there).
	Why string
}

// String lists the operations, e.g. "qemu: pause resume (no snapshot/restore: ...)".
func (c Capabilities) String() string {
	var ops []string
	for _, o := range []struct {
		ok   bool
		name string
	}{{c.Pause, "pause"}, {c.Resume, "resume"}, {c.Snapshot, "snapshot"}, {c.Restore, "restore"}} {
		if o.ok {
			ops = append(ops, o.name)
		}
	}
	s := c.VMM + ": " + strings.Join(ops, " ")
	if c.Why != "" {
		s += " (" + c.Why + ")"
	}
	return s
}

// Unsupported is the error of an operation the VMM does not offer: an
// Unimplemented status naming the VMM, the operation and the reason.
func Unsupported(vmm, op, why string) error {
	return status.Errorf(codes.Unimplemented, "vmm %s: %s is not supported: %s", vmm, op, why)
}

// opError wraps a VMM failure with the VMM and operation, keeping a status
// code the VMM already gave and using Unavailable otherwise (the monitor
// could not be reached or refused).
func opError(vmm, op string, err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok {
		return status.Errorf(s.Code(), "vmm %s: %s: %s", vmm, op, s.Message())
	}
	return status.Error(codes.Unavailable, fmt.Sprintf("vmm %s: %s: %v", vmm, op, err))
}
