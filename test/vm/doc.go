// Package vmtest holds sailbox's end-to-end test of a real arm64 sandbox VM:
// QEMU (TCG) boots the Debian arm64 kernel with imageinit and the guest
// agent, the host reaches the agent through sailbox's vhost-user-vsock
// backend and the hybrid-vsock dialer, and the test drives execs, an agent
// restart and a clean power-off.
package vmtest
