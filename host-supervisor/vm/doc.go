// Package vm boots a real arm64 sandbox microVM under QEMU: it fetches the
// Debian arm64 kernel and busybox-static into the cache, writes the
// initramfs (imageinit as /init, the guest agent, busybox, the kernel
// modules in dependency order), optionally an ext4 data disk, and drives
// QEMU with the vhost-user-vsock backend and QMP. The agent is then reached
// through the hybrid-vsock address hvsock://DIR/vm.vsock:10000.
//
// `host-supervisor vm up` is RunUp.
package vm
