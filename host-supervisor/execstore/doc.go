// Package execstore is the supervisor's durable exec journal: one bbolt file
// holding every exec record (request, idempotency key, checkpoint generation,
// state, exit status, output offsets) and the sandbox registry.
//
// Every commit is fsynced before it returns (bbolt's Batch coalesces
// concurrent commits into one transaction, so concurrency amortises the
// fsync). State changes go through one typed state machine (state.go):
// accepted → running → exited | failed | timed_out | lost, with accepted →
// failed | lost for a start that was refused or never acknowledged. Illegal
// moves are errors, never silently applied.
package execstore
