// Package freeze quiesces the guest's filesystems for a snapshot and thaws
// them again: pre-freeze hooks, an optional cgroup v2 freeze of the workload,
// syncfs and FIFREEZE of every writable, freezable mount (reverse mount
// order, rolled back on error), and the reverse on thaw (FITHAW, cgroup
// unfreeze, post-thaw hooks). A watchdog thaws by itself when no thaw comes,
// so a lost host can never leave the guest frozen.
//
// While frozen, a write to a frozen filesystem blocks in the kernel until the
// thaw. Agent code that writes on behalf of the host calls
// Freezer.CheckWritable first and answers FailedPrecondition instead of
// hanging. The agent's own state must live on tmpfs (or in Config.Exclude).
//
// The design follows qemu-ga's guest-fsfreeze-* (hooks, reverse order,
// EOPNOTSUPP/EBUSY tolerance, thaw loop until EINVAL, state file surviving an
// agent restart) and E2B's pre-pause cgroup.freeze.
package freeze
