package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/ids"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func init() {
	register(&command{
		name:    "exec",
		usage:   "--agent ADDR [--cwd DIR] [--env K=V]... [--timeout DUR] [--tty] [--stdin] [--background] [--id ID] -- 'shell command'",
		summary: "run a command in the sandbox",
		run:     runExec,
	})
	register(&command{name: "wait", usage: "--agent ADDR ID", summary: "wait for an exec and exit with its status", run: runWait})
	register(&command{name: "logs", usage: "[--follow] --agent ADDR ID", summary: "print an exec's output", run: runLogs})
	register(&command{name: "kill", usage: "[--signal SIG] --agent ADDR ID", summary: "signal an exec's process group", run: runKill})
	register(&command{name: "ps", usage: "--agent ADDR", summary: "list execs", run: runPs})
}

type execFlags struct {
	target
	cwd        string
	env        stringList
	timeout    string
	tty        bool
	stdin      bool
	background bool
	id         string
	outputCap  uint64
}

func runExec(ctx context.Context, stdio Stdio, args []string) int {
	var f execFlags
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	f.target.register(fs)
	fs.StringVar(&f.cwd, "cwd", "", "working directory in the sandbox")
	fs.Var(&f.env, "env", "KEY=VALUE added to the environment (repeatable)")
	fs.StringVar(&f.timeout, "timeout", "", "kill the command after this long (e.g. 30s; a bare number is seconds)")
	fs.BoolVar(&f.tty, "tty", false, "run on a pty; forwards the terminal's input and size")
	fs.BoolVar(&f.stdin, "stdin", false, "forward standard input to the command")
	fs.BoolVar(&f.stdin, "i", false, "short for --stdin")
	fs.BoolVar(&f.background, "background", false, "start and print the exec id; collect with wait/logs")
	fs.StringVar(&f.id, "id", "", "exec id (idempotent: the same id never runs twice)")
	fs.Uint64Var(&f.outputCap, "output-cap", 0, "per-stream output cap in bytes (0: the agent's default)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return fail(stdio, err)
	}
	cmd := strings.Join(pos, " ")
	if strings.TrimSpace(cmd) == "" {
		return fail(stdio, invalid("exec: empty command"))
	}
	timeout, err := parseDuration(f.timeout)
	if err != nil {
		return fail(stdio, err)
	}
	cl, err := f.execer()
	if err != nil {
		return fail(stdio, err)
	}
	defer cl.Close()

	req := &agentv1.StartRequest{
		Id: f.id, Command: cmd, Cwd: f.cwd, Env: f.env, TimeoutMs: timeout.Milliseconds(),
		Stdin: f.stdin || f.tty, Tty: f.tty, OutputCap: f.outputCap,
	}
	if req.Id == "" {
		// A client-side id makes a retried Start (after a dropped link) safe.
		req.Id = ids.NewExecID()
	}
	var restore func()
	if f.tty {
		if in, ok := stdio.In.(*os.File); ok && term.IsTerminal(int(in.Fd())) {
			if cols, rows, err := term.GetSize(int(in.Fd())); err == nil {
				req.Rows, req.Cols = uint32(rows), uint32(cols)
			}
		}
	}
	resp, err := cl.Start(ctx, req)
	if err != nil {
		return fail(stdio, err)
	}
	id := resp.Status.Id
	if f.background {
		fmt.Fprintln(stdio.Out, id)
		return 0
	}

	// Forward Ctrl-C and termination to the remote process group.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	fwdCtx, stopFwd := context.WithCancel(ctx)
	defer stopFwd()
	go func() {
		for {
			select {
			case <-fwdCtx.Done():
				return
			case s := <-sigs:
				sctx, cancel := context.WithTimeout(fwdCtx, 5*time.Second)
				cl.Signal(sctx, id, int(s.(syscall.Signal)))
				cancel()
			}
		}
	}()

	if f.tty {
		restore = forwardTTY(fwdCtx, stdio, cl, id)
	} else if f.stdin {
		go forwardStdin(fwdCtx, stdio.In, cl, id)
	}
	final, _, err := cl.CopyOutput(ctx, id, agentclient.Offsets{}, true, stdio.Out, stdio.Err)
	if restore != nil {
		restore()
	}
	if err != nil {
		return fail(stdio, err)
	}
	if f.id == "" {
		// Nobody can ask for it again by name: free the agent's copy now.
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cl.Release(rctx, id)
		cancel()
	}
	return exitStatus(stdio, final)
}

// exitStatus maps a final exec status to the CLI's exit status and reports
// truncated output on stderr.
func exitStatus(stdio Stdio, st *agentv1.ExecStatus) int {
	for _, s := range []struct {
		name string
		info *agentv1.StreamInfo
	}{{"stdout", st.Stdout}, {"stderr", st.Stderr}} {
		if s.info.GetTruncated() {
			fmt.Fprintf(stdio.Err, "warning: exec %s: %s truncated: kept %d of %d bytes (output cap)\n", st.Id, s.name, s.info.Kept, s.info.Total)
		}
	}
	switch {
	case st.State == agentv1.ExecState_EXEC_STATE_RUNNING:
		return fail(stdio, status.Errorf(codes.Internal, "exec %s is still running", st.Id))
	case st.TimedOut:
		return ExitTimedOut
	case st.Signal > 0:
		return 128 + int(st.Signal)
	}
	return int(st.ExitCode)
}

func forwardStdin(ctx context.Context, in io.Reader, cl Execer, id string) {
	buf := make([]byte, 256<<10)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if werr := cl.WriteStdin(ctx, id, buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			cl.CloseStdin(ctx, id)
			return
		}
	}
}

// forwardTTY puts the local terminal in raw mode, forwards keystrokes and
// window size changes, and returns a function that restores the terminal.
func forwardTTY(ctx context.Context, stdio Stdio, cl Execer, id string) func() {
	in, ok := stdio.In.(*os.File)
	if !ok || !term.IsTerminal(int(in.Fd())) {
		go forwardStdin(ctx, stdio.In, cl, id)
		return nil
	}
	state, err := term.MakeRaw(int(in.Fd()))
	if err != nil {
		go forwardStdin(ctx, stdio.In, cl, id)
		return nil
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-winch:
				if cols, rows, err := term.GetSize(int(in.Fd())); err == nil {
					cl.Resize(ctx, id, uint32(rows), uint32(cols))
				}
			}
		}
	}()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 && cl.WriteStdin(ctx, id, buf[:n]) != nil {
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return func() {
		signal.Stop(winch)
		term.Restore(int(in.Fd()), state)
	}
}

func runWait(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("wait", flag.ContinueOnError)
	t.register(fs)
	id, cl, code := idCommand(stdio, fs, &t, args)
	if cl == nil {
		return code
	}
	defer cl.Close()
	st, err := cl.Wait(ctx, id)
	if err != nil {
		return fail(stdio, err)
	}
	return exitStatus(stdio, st)
}

func runLogs(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	t.register(fs)
	follow := fs.Bool("follow", false, "keep printing until the exec has finished")
	fs.BoolVar(follow, "f", false, "short for --follow")
	id, cl, code := idCommand(stdio, fs, &t, args)
	if cl == nil {
		return code
	}
	defer cl.Close()
	if _, _, err := cl.CopyOutput(ctx, id, agentclient.Offsets{}, *follow, stdio.Out, stdio.Err); err != nil {
		return fail(stdio, err)
	}
	return 0
}

func runKill(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("kill", flag.ContinueOnError)
	t.register(fs)
	sigName := fs.String("signal", "TERM", "signal name or number")
	fs.StringVar(sigName, "s", "TERM", "short for --signal")
	id, cl, code := idCommand(stdio, fs, &t, args)
	if cl == nil {
		return code
	}
	defer cl.Close()
	sig, err := parseSignal(*sigName)
	if err != nil {
		return fail(stdio, err)
	}
	if err := cl.Signal(ctx, id, int(sig)); err != nil {
		return fail(stdio, err)
	}
	return 0
}

func runPs(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("ps", flag.ContinueOnError)
	t.register(fs)
	if _, err := parseFlags(fs, args); err != nil {
		return fail(stdio, err)
	}
	cl, err := t.execer()
	if err != nil {
		return fail(stdio, err)
	}
	defer cl.Close()
	list, err := cl.List(ctx)
	if err != nil {
		return fail(stdio, err)
	}
	PrintExecTable(stdio.Out, list)
	return 0
}

// PrintExecTable prints execs as a table (shared with the REPL).
func PrintExecTable(w io.Writer, list []*agentv1.ExecStatus) {
	fmt.Fprintf(w, "%-28s %-10s %7s %6s %-8s %s\n", "ID", "STATE", "PID", "EXIT", "AGE", "COMMAND")
	for _, st := range list {
		exit := "-"
		switch {
		case st.State == agentv1.ExecState_EXEC_STATE_RUNNING:
		case st.Signal > 0:
			exit = "sig" + strconv.Itoa(int(st.Signal))
		default:
			exit = strconv.Itoa(int(st.ExitCode))
		}
		state := strings.ToLower(strings.TrimPrefix(st.State.String(), "EXEC_STATE_"))
		age := time.Since(time.Unix(0, st.StartedUnixNano)).Round(time.Second)
		fmt.Fprintf(w, "%-28s %-10s %7d %6s %-8s %s\n", st.Id, state, st.Pid, exit, age, st.Command)
	}
}

// idCommand parses flags and exactly one exec id, and connects.
func idCommand(stdio Stdio, fs *flag.FlagSet, t *target, args []string) (string, Execer, int) {
	pos, err := parseFlags(fs, args)
	if err != nil {
		return "", nil, fail(stdio, err)
	}
	if len(pos) != 1 {
		return "", nil, fail(stdio, invalid("%s: want exactly one exec id, got %d arguments", fs.Name(), len(pos)))
	}
	cl, err := t.execer()
	if err != nil {
		return "", nil, fail(stdio, err)
	}
	return pos[0], cl, 0
}

func parseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n < 0 {
			return 0, invalid("negative timeout %q", s)
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, invalid("bad duration %q (want e.g. 30s, 2m, or seconds)", s)
	}
	if d < 0 {
		return 0, invalid("negative timeout %q", s)
	}
	return d, nil
}

var signalNames = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL,
	"USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "TERM": syscall.SIGTERM, "STOP": syscall.SIGSTOP,
	"CONT": syscall.SIGCONT, "ALRM": syscall.SIGALRM, "WINCH": syscall.SIGWINCH,
}

func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, invalid("signal %d out of range", n)
		}
		return syscall.Signal(n), nil
	}
	if sig, ok := signalNames[strings.TrimPrefix(strings.ToUpper(s), "SIG")]; ok {
		return sig, nil
	}
	return 0, invalid("unknown signal %q", s)
}
