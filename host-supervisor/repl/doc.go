// Package repl is the interactive debugging shell of the host supervisor
// (`host-supervisor repl --agent ADDR`, and the prompt of `host-supervisor
// local`): line editing, persistent history, tab completion of commands,
// exec ids and remote paths, and commands that mirror the SDK (exec, wait,
// logs, kill, ps, write, read, stat, listen, shell, freeze, thaw, info).
// Remote paths are completed by listing the directory with ls in the
// sandbox (the agent has no directory-listing call) unless the Backend is a
// DirLister. Ctrl-C interrupts the foreground remote command (SIGINT to its
// process group; the third sends SIGKILL), never the REPL.
//
// The shell drives a Backend (one sandbox's agent), so it is plain Go that
// tests run against a real agent. When standard input is not a terminal it
// reads commands line by line and stops at the first failure, so scripts
// can drive it.
package repl
