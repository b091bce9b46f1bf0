// Command host-supervisor is sailbox's host side: a CLI that drives a guest
// agent (exec, files, listeners, ...), the durable daemon with the control
// API, the local sandbox and the debugging REPL.
package main

import (
	"os"

	"github.com/sailbox/sailbox/host-supervisor/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], cli.Stdio{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}))
}
