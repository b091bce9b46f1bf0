// Package rootfs defines sandbox images and builds them.
//
// A definition (Image) is immutable: a base (debian_arm64, debian_arm) and
// ordered steps (apt_install, pip_install, run_commands, env, build), each
// helper returning a new Image; bad input is an InvalidArgument naming the
// step. Its digest chains over the steps (each step's digest covers its
// parent's), so the builder reuses the longest prefix of steps it has
// cached. The same definition is a JSON file (see file.go and
// examples/demo.json).
//
// The builder (Builder.Build) makes a bootable ext4 root image:
// debootstrap (minbase, --foreign) from the host apt's mirror and its second
// stage under qemu-user; every step in a chroot with /proc, /sys and /dev
// mounted inside a private mount + PID namespace, so a failed or killed
// step leaves no mount and no process behind. Foreign binaries run through
// the host's binfmt_misc entry when there is one, else through a private
// binfmt_misc instance of a user namespace (Linux >= 6.7) that the host
// never sees. Apt and pip run as argv, never through a shell; run_commands
// and build commands are shell commands by definition (/bin/sh -c CMD).
//
// The image carries /usr/bin/guest-agent, imageinit as /sbin/init (and
// /init), the VM kernel's modules (the same Debian package the VM driver
// boots, host-supervisor/vm) listed in load order in /etc/sailbox/modules,
// the env file /etc/sailbox/env (format: package envfile) and the manifest
// /etc/sailbox/image.json. It is written with mkfs.ext4 -d (no loop mount)
// and cached under $SAILBOX_CACHE/images (see Cache), beside its build log
// and the kernel Image its modules belong to.
//
// RunImageCommand is the `host-supervisor image build|ls|rm` command line.
package rootfs
