// Package rootfs defines sandbox images and builds them.
//
// A definition (Image) is immutable: a base (debian_arm64, debian_arm) and
// ordered steps (apt_install, pip_install, run_commands, env, build), each
// helper returning a new Image. Its digest chains over the steps, so the
// builder reuses the longest prefix of steps it has cached.
//
// The builder (Builder.Build) makes a bootable ext4 root image: debootstrap
// (minbase, --foreign) and its second stage under qemu-user, every step in a
// chroot with /proc, /sys and /dev mounted in a private mount + PID
// namespace (so a killed build leaves no mount and no process behind), then
// the static guest agent, imageinit as /sbin/init, the VM kernel's modules,
// /etc/sailbox/env and the manifest /etc/sailbox/image.json, written with
// mkfs.ext4 -d. Results are cached under $SAILBOX_CACHE/images.
//
// RunImageCommand is the `host-supervisor image build|ls|rm` command line.
package rootfs
