// Package vmm is the supervisor's view of a virtual machine monitor for the
// snapshot lifecycle: pause and resume the vCPUs, write a snapshot of the
// whole VM to a path and restore one, and say which of these the VMM (in
// its current device configuration) can do. The lifecycle package builds
// checkpoint, restore, fork and sleep on top of it.
//
// QEMU is driven through QMP (stop/cont). sailbox's QEMU VMs carry a
// vhost-user-vsock device, which QEMU cannot migrate, so QEMU snapshots and
// restores are reported unsupported (Capabilities, and codes.Unimplemented
// naming the VMM) rather than attempted.
package vmm
