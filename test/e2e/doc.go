// Package e2e holds end-to-end tests of the command line against a real
// guest-agent process over a real unix socket.
package e2e
