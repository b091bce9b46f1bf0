// Package cli implements the host-supervisor command line (DESIGN.md §3).
//
// Each subcommand lives in its own file and registers itself in init. Exit
// status: commands that run a remote process exit with its status (124 for
// a timeout, 128+N for a signal); any error of the supervisor or the agent
// exits 125 with "error: CODE: message" on stderr, CODE a gRPC status name.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/sailbox/sailbox/internal/errstatus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit statuses shared by the subcommands.
const (
	ExitTimedOut = 124
	ExitError    = 125
)

// Stdio is the command's standard streams.
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
}

// command is one subcommand.
type command struct {
	name    string
	usage   string // one line: the arguments after the name
	summary string
	run     func(ctx context.Context, io Stdio, args []string) int
}

var commands = map[string]*command{}

// register adds a subcommand; called from init in each command's file.
func register(c *command) {
	if _, dup := commands[c.name]; dup {
		panic("cli: duplicate command " + c.name)
	}
	commands[c.name] = c
}

// Main runs the command line and returns the exit status.
func Main(args []string, stdio Stdio) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stdio.Err)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stdio.Err, "host-supervisor: unknown command %q\n\n", args[0])
		usage(stdio.Err)
		return 2
	}
	return c.run(context.Background(), stdio, args[1:])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: host-supervisor COMMAND [flags] [args]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := commands[n]
		fmt.Fprintf(w, "  %-14s %s\n  %-14s   %s %s\n", n, c.summary, "", n, c.usage)
	}
}

// fail prints err as "error: CODE: message" and returns ExitError.
func fail(stdio Stdio, err error) int {
	fmt.Fprintln(stdio.Err, errstatus.Line(err))
	return ExitError
}

// invalid returns an InvalidArgument error.
func invalid(format string, a ...any) error {
	return status.Errorf(codes.InvalidArgument, format, a...)
}

// parseFlags parses flags that may be interspersed with positional
// arguments; everything after "--" is positional.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, invalid("%s: %v", fs.Name(), err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// flag stops at "--" (consumed) or at the first non-flag.
		if consumedDashDash(args, rest) {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func consumedDashDash(args, rest []string) bool {
	i := len(args) - len(rest) - 1
	return i >= 0 && args[i] == "--"
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// isTerminal reports whether f is a terminal.
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	if !ok {
		return false
	}
	fi, err := file.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
