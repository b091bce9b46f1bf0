// Package vhostuser is the back-end side of the vhost-user protocol: it
// serves one front end (QEMU) over a unix socket, maps the guest memory the
// front end shares (memfd regions from SET_MEM_TABLE), tracks the vrings the
// front end configures, and hands started split virtqueues to a Device.
//
// It implements what a vsock device needs and no more: features and protocol
// features (CONFIG, REPLY_ACK), SET_MEM_TABLE, SET_VRING_NUM/ADDR/BASE/KICK/
// CALL/ERR/ENABLE, GET_VRING_BASE and GET_CONFIG. Split rings only, with
// indirect descriptors and event indices (or the ring flags when the
// driver does not use them); no packed rings, no dirty logging (so no live
// migration), no IOMMU.
//
// Everything read from guest memory is treated as hostile: descriptor
// addresses are translated with bounds checks, chains are bounded by the
// queue size, and a broken ring yields an error, never a panic.
//
// Little-endian hosts only (amd64, arm64): ring indices are read and written
// with native atomics on the little-endian ring layout.
package vhostuser
