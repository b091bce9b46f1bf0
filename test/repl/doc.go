// Package repl holds end-to-end tests of the REPL: the built host-supervisor
// runs `repl --agent` and `local` in a real pty (or with a script on stdin),
// and the tests type, read the screen and check processes in /proc.
package repl
