package cli

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/repl"
)

func init() {
	register(&command{
		name:    "repl",
		usage:   "--agent ADDR [--history FILE]",
		summary: "interactive debugging shell on an agent (not a terminal: runs the commands on stdin, stops at the first failure)",
		run:     runREPL,
	})
}

func runREPL(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("repl", flag.ContinueOnError)
	t.register(fs)
	hist := fs.String("history", "", `history file ("-": none; default $XDG_STATE_HOME/sailbox/history or ~/.local/state/sailbox/history)`)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return fail(stdio, err)
	}
	if len(pos) > 0 {
		return fail(stdio, invalid("repl: unexpected arguments %q", pos))
	}
	if t.agent == "" {
		return fail(stdio, invalid("no target: give --agent ADDR"))
	}
	b, err := repl.DialAgent(t.agent)
	if err != nil {
		return fail(stdio, err)
	}
	defer b.Close()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	info, err := b.Info(pctx)
	cancel()
	if err != nil {
		return fail(stdio, err)
	}
	return repl.Run(ctx, repl.Config{
		Backend: b, In: stdio.In, Out: stdio.Out, Err: stdio.Err, HistoryFile: *hist,
		Banner: fmt.Sprintf("sailbox repl: agent %s (version %s, host %s). Type help; Ctrl-D leaves.", t.agent, info.Version, info.Hostname),
	})
}
