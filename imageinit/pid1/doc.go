// Package pid1 is the body of imageinit, sailbox's PID 1 inside the VM: it
// mounts the pseudo filesystems (/proc, /sys, /dev, /dev/pts, /dev/shm,
// /run, /tmp, cgroup2), loads the image's kernel modules
// (/etc/sailbox/modules, finit_module in the listed order), sets the
// hostname, brings up lo (and eth0 from ip=), reaps zombies, runs the guest
// agent with the image environment (/etc/sailbox/env) and restarts it with
// backoff, and powers off cleanly (processes stopped, sync, its mounts
// undone) on SIGTERM, SIGINT, SIGPWR, SIGUSR2, SIGHUP or a "poweroff" line
// on its vsock control port (10001; "ping" answers "OK pong").
//
// With sailbox.root=DEV on the initramfs it is stage 1 of a root-disk boot:
// it mounts DEV, moves it to / and execs the disk's /sbin/init, which is
// imageinit again and boots normally from the disk.
//
// The configuration comes from the kernel command line (sailbox.* keys, see
// ParseCmdline). The power-off action is injected through Options so tests
// can run Run as PID 1 of a PID namespace without touching the host.
package pid1
