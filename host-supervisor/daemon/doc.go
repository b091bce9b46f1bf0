// Package daemon is the durable host supervisor: it runs execs in
// registered sandboxes so that their state survives supervisor crashes.
//
// Durability rules (DESIGN.md §1, issue 5):
//   - A request is journalled (state accepted, fsynced) before it is sent to
//     the agent; the exec id the agent sees is the record id, so a resend
//     within one supervisor life is deduplicated by the agent.
//   - After a restart a record is never sent again: an accepted record is
//     resolved by asking the agent (known → running; unknown → lost).
//   - Output is copied into the state dir as it streams; offsets are
//     journalled in batches after the files are fsynced, and on recovery
//     the files are cut back to the journalled offsets, so a re-attach
//     resumes exactly there: no byte lost, none doubled.
//   - The agent's copy is released only after the final status and all
//     output are durable.
//
// Lifecycle (lifecycle.go): a sandbox added with its VM's monitor (qmp)
// gets a lifecycle.Sandbox; the lifecycle RPCs are thin calls over it, every
// call that reaches an agent wakes a sleeping sandbox first, and the
// monitors with their run states are journalled in vmms.json so a restarted
// daemon re-attaches them.
//
// The plain-Go API (Daemon methods) is what the ttrpc service (service.go)
// wraps.
package daemon
