package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/sailbox/sailbox/host-supervisor/local"
	"github.com/sailbox/sailbox/host-supervisor/repl"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func init() {
	register(&command{
		name:    "local",
		usage:   "[--agent-bin PATH] [--state-dir DIR] [--plain] [--history FILE]",
		summary: "a local sandbox: the guest agent as a child (isolated in namespaces as root), no VM, and the REPL on it",
		run:     runLocal,
	})
}

func runLocal(ctx context.Context, stdio Stdio, args []string) int {
	fs := flag.NewFlagSet("local", flag.ContinueOnError)
	agentBin := fs.String("agent-bin", "", "guest-agent binary (default: guest-agent next to this executable)")
	stateDir := fs.String("state-dir", "", "keep the agent's socket, state, log and the exec journal here, across sessions (default: a private directory removed at exit, no journal)")
	plain := fs.Bool("plain", false, "run the agent without namespaces even as root")
	hist := fs.String("history", "", `history file ("-": none; default $XDG_STATE_HOME/sailbox/history or ~/.local/state/sailbox/history)`)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return fail(stdio, err)
	}
	if len(pos) > 0 {
		return fail(stdio, invalid("local: unexpected arguments %q", pos))
	}
	notices := stdio.Err
	if notices == nil {
		notices = io.Discard
	}
	sb, err := local.Start(ctx, local.Options{AgentBin: *agentBin, StateDir: *stateDir, Plain: *plain, Notices: notices})
	if err != nil {
		return fail(stdio, status.Errorf(codes.FailedPrecondition, "local sandbox: %v", err))
	}
	defer sb.Close()
	// Killed or hung up: still take the agent and the private dir along
	// (the parent death signal alone would leave the dir).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	var killed atomic.Int32
	go func() {
		sig := <-sigs
		code := 128 + int(sig.(syscall.Signal))
		killed.Store(int32(code))
		sb.Close()
		os.Exit(code)
	}()
	var b repl.Backend
	if *stateDir != "" {
		// Execs go through the durable supervisor: journalled in the state dir.
		j, err := local.OpenJournal(sb.Dir, sb.Addr)
		if err != nil {
			return fail(stdio, status.Errorf(codes.FailedPrecondition, "local sandbox: %v", err))
		}
		b = j
		fmt.Fprintf(stdio.Err, "journal: execs are journalled in %s (agent log: %s)\n", sb.Dir, sb.Log)
	} else if b, err = repl.DialAgent(sb.Addr); err != nil {
		return fail(stdio, err)
	}
	defer b.Close()
	code := repl.Run(ctx, repl.Config{
		Backend: b, In: stdio.In, Out: stdio.Out, Err: stdio.Err, HistoryFile: *hist, Gone: sb.Gone(),
		KeepFinished: *stateDir != "",
		Prompt:       "local> ",
		Banner:       "sailbox local sandbox (agent " + sb.Addr + "). Type help; try: exec uname -a. Ctrl-D or exit leaves.",
	})
	if k := killed.Load(); k != 0 {
		sb.Close() // the signal handler is closing it and exits
		return int(k)
	}
	return code
}
