// Package sandbox is the supervisor's registry of sandboxes: id → agent
// address, checkpoint generation and labels (journalled in the execstore),
// each with one reconnecting agent client kept healthy by pings.
//
// A dropped agent connection is normal (every snapshot resets vsock): the
// health loop notices, the client redials, and a connection that stalls
// (pings time out) is closed so every call on it redials instead of hanging.
package sandbox
