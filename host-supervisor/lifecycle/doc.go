// Package lifecycle orchestrates a sandbox's snapshot lifecycle (DESIGN.md
// §1 and §4.5) over three small interfaces: the guest agent's Snapshot
// service, a VMM (package vmm) and a journal of checkpoint generations.
//
//   - Checkpoint: freeze the guest → VMM snapshot (or, for a VMM that cannot
//     snapshot, pause and resume) → thaw → bump the generation. The thaw is
//     attempted whatever failed before it.
//   - Restore: VMM restore → reconnect → agent Resume (host time, fresh
//     entropy, generation) → journal: execs accepted after the restored
//     checkpoint are lost, never replayed.
//   - Fork: a restore into a new sandbox with a new identity.
//   - Pause / Resume, and Sleep: a pause that Wake undoes on the next exec
//     or ingress (the daemon calls Wake before forwarding).
//
// Every snapshot resets the guest's vsock connections; the agent client
// reconnects, so that is not an error here.
package lifecycle
