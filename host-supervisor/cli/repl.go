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
		usage:   "(--agent ADDR | --supervisor S --sandbox ID) [--history FILE]",
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
	addr := t.agent
	if t.viaSupervisor() {
		// The REPL talks to the agent at the address the daemon has
		// registered (like freeze and thaw): its execs are not journalled.
		if addr, err = supervisorAgentAddr(ctx, &t); err != nil {
			return fail(stdio, err)
		}
	} else if addr == "" {
		return fail(stdio, invalid("no target: give --agent ADDR (or --supervisor S --sandbox ID)"))
	}
	b, err := repl.DialAgent(addr)
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
		Banner: fmt.Sprintf("sailbox repl: agent %s (version %s, host %s). Type help; Ctrl-D leaves.", addr, info.Version, info.Hostname),
	})
}
