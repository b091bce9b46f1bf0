// Package execengine runs and tracks the guest's execs: host-named commands
// with spooled output, timeouts, signals, stdin and ptys.
//
// It is plain Go, with no RPC in it: guest-agent/service puts a thin ttrpc
// layer on top. Every exec runs in its own process group (or session, for a
// pty), so signals and timeouts reach its children too. Output of each stream
// goes to a spool file on the agent's state dir (tmpfs in the guest), read by
// offset. Exec state lives in the agent, never in a connection: a client can
// come and go and pick up where it left off.
package execengine
