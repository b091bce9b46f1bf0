// Package pid1 is the body of imageinit, sailbox's PID 1 inside the VM: it
// mounts the pseudo filesystems, loads the image's kernel modules, sets the
// hostname, brings up lo (and eth0 from ip=), reaps zombies, runs the guest
// agent and restarts it with backoff, and powers off cleanly on request
// (SIGTERM, SIGINT, SIGPWR, SIGUSR2, or "poweroff" on its vsock control port).
//
// The configuration comes from the kernel command line (sailbox.* keys, see
// ParseCmdline). The power-off action is a field of Config so that tests can
// run Run as PID 1 of a PID namespace without touching the host.
package pid1
