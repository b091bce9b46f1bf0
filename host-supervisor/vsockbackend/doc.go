// Package vsockbackend is a virtio-vsock device served to QEMU over
// vhost-user, with the Firecracker hybrid-vsock protocol on the host side,
// so the supervisor's hvsock:// dialer reaches a QEMU guest's AF_VSOCK
// listeners exactly as it reaches Firecracker's and Cloud Hypervisor's.
//
// Host → guest: a client connects to Config.HybridSocket and writes
// "CONNECT <port>\n"; once the guest accepts, the back end answers
// "OK <host port>\n" and raw bytes follow. If the guest refuses (RST) or
// does not answer, the connection is closed without a reply.
// Guest → host: a guest connect to CID 2 port P is dialled to the unix
// listener "<HybridSocket>_<P>"; no listener means RST.
//
// Stream sockets only. Per-connection buffering is bounded by credit: the
// back end reads from the host no more than the guest's advertised space,
// and holds at most its own advertised buf_alloc (128 KiB) of guest data
// for a slow host reader, so one stalled connection never blocks another.
//
// QEMU command-line pieces (guest memory must be a shared memfd):
//
//	-object memory-backend-memfd,id=mem,size=512M,share=on
//	-machine virt,memory-backend=mem
//	-chardev socket,id=vvsock,path=SOCK
//	-device vhost-user-vsock-pci,chardev=vvsock     (or vhost-user-vsock-device on virtio-mmio)
//
// where SOCK is Config.VhostUserSocket. The guest CID is not a QEMU
// option: QEMU reads it from the back end (GET_CONFIG). A VM with this
// device cannot be live-migrated or snapshotted by QEMU (the device is
// marked unmigratable).
//
// Tests drive the back end with a fake guest (vhostuser/vhostusertest: a
// memfd, split rings, QEMU's vhost-user sequence) and a paused real QEMU;
// BenchmarkStream256MiB and BenchmarkConcurrent256 measure against the fake
// guest beside a plain unix-socket copy; BenchmarkInVM boots a real arm64
// guest under TCG when SAILBOX_VSOCK_KERNEL and SAILBOX_VSOCK_MODULES name
// a Debian kernel Image and its module tree.
package vsockbackend
