// Package local runs a local sandbox: a guest agent started as a child
// process on a private unix socket in a private directory, with no VM and
// no configuration. It is what `host-supervisor local` (and `make run`)
// opens the REPL on.
//
// As root the agent is isolated in new mount, PID, UTS and IPC namespaces:
// it is PID 1 there and reaps; the mount namespace gets its own /proc (so
// ps shows only the sandbox), a private tmpfs on /tmp and /dev/shm (scratch
// files of the sandbox never land in, or collide with, the host's /tmp and
// vanish with it; not when the working directory or the state dir is under
// /tmp, which the private one would hide), and the hostname "sailbox-local".
// The agent and its commands start in the caller's working directory. The rest of the host's
// filesystem is visible and writable: this is a debugging sandbox, not a
// security boundary. Mount events propagate from the host into the sandbox,
// never back (the new namespace's mounts are made slaves).
//
// Freezing is confined: the agent gets --freeze-root pointing at an empty
// scratch directory and --freeze-hooks at an empty one, so a Freeze from the
// local REPL can never freeze the host's filesystems or run the host's
// freeze hooks.
//
// Not root, the agent runs as a plain child process, and Start says so.
//
// Close (and the death of this process) leaves nothing behind: as root the
// agent's exit tears down its PID namespace; otherwise the agent gets
// SIGTERM (it kills its running execs' process groups), then SIGKILL, and
// whatever is left in its session is killed. The agent also has a parent
// death signal, so it dies with the process that started it.
package local
