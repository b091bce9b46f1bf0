// Package vm boots a real arm64 sandbox microVM under QEMU (TCG here).
//
//   - Fetcher downloads the Debian arm64 kernel and busybox-static with a
//     private APT configuration (APT::Architecture "arm64"; the host's dpkg
//     architectures are untouched) into ${SAILBOX_CACHE:-~/.cache/sailbox},
//     keyed by package version, and reuses them offline.
//   - WriteInitramfs writes the initramfs as cpio newc (cavaliergopher/cpio):
//     imageinit as /init, the guest agent, busybox with applet links, and
//     kernel modules in dependency order (read from each .ko's .modinfo, no
//     depmod needed) listed in /etc/sailbox/modules.
//   - MakeDataDisk makes an ext4 data disk with mkfs.ext4 -d (mounted at
//     /data); Config.RootDisk boots a built root image instead (imageinit
//     switches root to it; writes go to a snapshot overlay).
//   - Start runs QEMU with sailbox's vhost-user-vsock backend, so the agent
//     is reached at AgentAddr (hvsock://DIR/vm.vsock:10000), and QMP for
//     stop, cont, quit and query-status. Shutdown asks imageinit to power
//     off over its vsock control port (10001, "poweroff\n" -> "OK ..."),
//     then quits through QMP, then kills QEMU.
//   - RunUp is `host-supervisor vm up`.
package vm
