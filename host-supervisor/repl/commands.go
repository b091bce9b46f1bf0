package repl

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// argKind says what a command's positional arguments are, for completion.
type argKind int

const (
	argNone argKind = iota
	argExecID
	argRemotePath
	argCommand
)

// command is one REPL command.
type command struct {
	name    string
	usage   string // arguments after the name
	summary string
	example string
	args    argKind
	flags   []string // for completion
	run     func(ctx context.Context, s *session, c *call) error
}

// call is one invocation: the raw line and its words (words[0] is the name).
type call struct {
	line  string
	words []word
}

func (c *call) args() []string { return texts(c.words[1:]) }

// rpcTimeout bounds calls that should answer at once.
const rpcTimeout = 30 * time.Second

func commandTable() map[string]*command {
	cs := []*command{
		{name: "help", usage: "[COMMAND]", summary: "list the commands, or show one command's usage and an example",
			example: "help exec", run: cmdHelp},
		{name: "exec", usage: "[-b] [--cwd DIR] [--env K=V]... [--timeout DUR] [--id ID] COMMAND...",
			summary: "run a shell command (/bin/sh -c) and stream its output (stdin is empty: use shell for interactive programs); -b runs it in the background and prints its id; Ctrl-C interrupts it",
			example: "exec uname -a   |   exec -b --id web python3 -m http.server 8080", args: argRemotePath,
			flags: []string{"-b", "--background", "--cwd", "--env", "--timeout", "--id"}, run: cmdExec},
		{name: "wait", usage: "ID", summary: "wait for an exec to finish and show its status", example: "wait web", args: argExecID, run: cmdWait},
		{name: "logs", usage: "[-f] ID", summary: "print an exec's output so far; -f follows it until the exec ends",
			example: "logs -f web", args: argExecID, flags: []string{"-f", "--follow"}, run: cmdLogs},
		{name: "kill", usage: "[-s SIG] ID", summary: "signal an exec's process group (default TERM)",
			example: "kill -s INT web", args: argExecID, flags: []string{"-s", "--signal"}, run: cmdKill},
		{name: "release", usage: "ID", summary: "forget a finished exec and its output", example: "release web", args: argExecID, run: cmdRelease},
		{name: "ps", summary: "list the execs the agent holds", example: "ps", run: cmdPs},
		{name: "listen", usage: "PORT [--tcp|--http|--ssh] [--timeout DUR]",
			summary: "wait until a port in the sandbox accepts connections (tcp), answers HTTP, or sends an SSH banner",
			example: "listen 8080 --http --timeout 30s", flags: []string{"--tcp", "--http", "--ssh", "--timeout"}, run: cmdListen},
		{name: "shell", usage: "[COMMAND]", summary: "an interactive terminal session in the sandbox (default: $SHELL or /bin/sh); Ctrl-] leaves it",
			example: "shell   |   shell top", args: argRemotePath, run: cmdShell},
		{name: "freeze", usage: "[--watchdog DUR]", summary: "quiesce the sandbox for a snapshot (hooks, cgroups, filesystems); the watchdog thaws by itself",
			example: "freeze --watchdog 2m", flags: []string{"--watchdog"}, run: cmdFreeze},
		{name: "thaw", summary: "undo freeze", example: "thaw", run: cmdThaw},
		{name: "info", summary: "the agent's version, uptime, boot id and frozen state", example: "info", run: cmdInfo},
		{name: "exit", usage: "[STATUS]", summary: "leave (also Ctrl-D)", example: "exit", run: cmdExit},
	}
	cs = append(cs, filesCommands()...)
	m := make(map[string]*command, len(cs))
	for _, c := range cs {
		m[c.name] = c
	}
	return m
}

func (s *session) sortedCommands() []*command {
	out := make([]*command, 0, len(s.commands))
	for _, c := range s.commands {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func cmdHelp(ctx context.Context, s *session, c *call) error {
	args := c.args()
	if len(args) == 0 {
		tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
		for _, cmd := range s.sortedCommands() {
			fmt.Fprintf(tw, "  %s\t%s\n", cmd.name, cmd.summary)
		}
		tw.Flush()
		fmt.Fprintln(s.out, "Type help COMMAND for its usage and an example. Tab completes commands, exec ids and remote paths.")
		return nil
	}
	cmd, ok := s.commands[args[0]]
	if !ok {
		return invalid("help: unknown command %q (type help)", args[0])
	}
	fmt.Fprintf(s.out, "usage:   %s %s\n         %s\nexample: %s\n", cmd.name, cmd.usage, cmd.summary, cmd.example)
	return nil
}

func cmdExit(ctx context.Context, s *session, c *call) error {
	args := c.args()
	if len(args) > 1 {
		return usageErr("exit", "want at most one status")
	}
	code := 0
	if len(args) == 1 {
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 || n > 255 {
			return usageErr("exit", "status %q: want 0..255", args[0])
		}
		code = n
	}
	return &exitRequest{code: code}
}

// newExecID returns a short id that is easy to type (the REPL names its
// execs so a retried Start after a dropped link is idempotent).
func newExecID() string {
	var b [4]byte
	rand.Read(b[:])
	return "e" + hex.EncodeToString(b[:])
}

func cmdExec(ctx context.Context, s *session, c *call) error {
	fs := flag.NewFlagSet("exec", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	bg := fs.Bool("b", false, "")
	fs.BoolVar(bg, "background", false, "")
	cwd := fs.String("cwd", "", "")
	var env stringList
	fs.Var(&env, "env", "")
	timeoutFlag := fs.String("timeout", "", "")
	id := fs.String("id", "", "")
	ws := c.words[1:]
	// Flags come first; the rest of the line is the command, verbatim.
	if err := fs.Parse(texts(ws)); err != nil {
		return usageErr("exec", "%v", err)
	}
	if fs.NArg() == 0 {
		return usageErr("exec", "no command")
	}
	first := ws[len(ws)-fs.NArg()]
	command := strings.TrimSpace(c.line[first.start:])
	timeout, err := parseDuration(*timeoutFlag)
	if err != nil {
		return err
	}
	for _, kv := range env {
		if !strings.Contains(kv, "=") {
			return usageErr("exec", "--env %q: want KEY=VALUE", kv)
		}
	}
	req := &agentv1.StartRequest{Id: *id, Command: command, Cwd: *cwd, Env: env, TimeoutMs: timeout.Milliseconds()}
	if req.Id == "" {
		req.Id = newExecID()
	}
	sctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	resp, err := s.b.Start(sctx, req)
	cancel()
	if err != nil {
		return err
	}
	st := resp.Status
	if !resp.Created {
		fmt.Fprintf(s.err, "note: exec %s already existed: showing it, not running it again\n", st.Id)
	}
	if *bg {
		fmt.Fprintln(s.out, st.Id)
		return nil
	}
	s.setForeground(st.Id)
	final, _, err := s.b.CopyOutput(ctx, st.Id, agentclient.Offsets{}, true, s.out, s.err)
	s.setForeground("")
	if err != nil {
		return err
	}
	if *id == "" && !s.cfg.KeepFinished {
		// Nobody can ask for it by name: free the agent's copy.
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s.b.Release(rctx, st.Id)
		cancel()
	}
	return s.finalStatus(final)
}

// finalStatus reports truncated output and turns a non-zero outcome into an
// exitError (124 timed out, 128+N killed by signal N, else the exit code).
func (s *session) finalStatus(st *agentv1.ExecStatus) error {
	for _, x := range []struct {
		name string
		info *agentv1.StreamInfo
	}{{"stdout", st.Stdout}, {"stderr", st.Stderr}} {
		if x.info.GetTruncated() {
			fmt.Fprintf(s.err, "warning: exec %s: %s truncated: kept %d of %d bytes (output cap)\n", st.Id, x.name, x.info.Kept, x.info.Total)
		}
	}
	switch {
	case st.State == agentv1.ExecState_EXEC_STATE_RUNNING:
		return status.Errorf(codes.Internal, "exec %s is still running", st.Id)
	case st.TimedOut:
		return &exitError{code: ExitTimedOut, what: "timed out"}
	case st.Signal > 0:
		return &exitError{code: 128 + int(st.Signal), what: fmt.Sprintf("killed by signal %d (%s)", st.Signal, signalName(int(st.Signal)))}
	case st.ExitCode != 0:
		return &exitError{code: int(st.ExitCode), what: fmt.Sprintf("exit status %d", st.ExitCode)}
	}
	return nil
}

// oneID parses flags and exactly one exec id.
func oneID(fs *flag.FlagSet, c *call) (string, error) {
	pos, err := parseArgs(fs, c.args())
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", usageErr(fs.Name(), "want exactly one exec id, got %d arguments", len(pos))
	}
	return pos[0], nil
}

func cmdWait(ctx context.Context, s *session, c *call) error {
	id, err := oneID(flag.NewFlagSet("wait", flag.ContinueOnError), c)
	if err != nil {
		return err
	}
	st, err := s.b.Wait(ctx, id)
	if err != nil {
		return err
	}
	if err := s.finalStatus(st); err != nil {
		return err
	}
	fmt.Fprintf(s.out, "exec %s: exit status 0\n", id)
	return nil
}

func cmdLogs(ctx context.Context, s *session, c *call) error {
	fs := flag.NewFlagSet("logs", flag.ContinueOnError)
	follow := fs.Bool("f", false, "")
	fs.BoolVar(follow, "follow", false, "")
	id, err := oneID(fs, c)
	if err != nil {
		return err
	}
	_, _, err = s.b.CopyOutput(ctx, id, agentclient.Offsets{}, *follow, s.out, s.err)
	return err
}

func cmdKill(ctx context.Context, s *session, c *call) error {
	fs := flag.NewFlagSet("kill", flag.ContinueOnError)
	name := fs.String("s", "TERM", "")
	fs.StringVar(name, "signal", "TERM", "")
	id, err := oneID(fs, c)
	if err != nil {
		return err
	}
	sig, err := parseSignal(*name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	return s.b.Signal(ctx, id, sig)
}

func cmdRelease(ctx context.Context, s *session, c *call) error {
	id, err := oneID(flag.NewFlagSet("release", flag.ContinueOnError), c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	return s.b.Release(ctx, id)
}

func cmdPs(ctx context.Context, s *session, c *call) error {
	if len(c.args()) > 0 {
		return usageErr("ps", "takes no arguments")
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	list, err := s.b.List(ctx)
	if err != nil {
		return err
	}
	sort.Slice(list, func(i, j int) bool { return list[i].StartedUnixNano < list[j].StartedUnixNano })
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPID\tEXIT\tAGE\tCOMMAND")
	for _, st := range list {
		exit := "-"
		switch {
		case st.State == agentv1.ExecState_EXEC_STATE_RUNNING:
		case st.TimedOut:
			exit = "timeout"
		case st.Signal > 0:
			exit = "sig" + signalName(int(st.Signal))
		default:
			exit = strconv.Itoa(int(st.ExitCode))
		}
		state := strings.ToLower(strings.TrimPrefix(st.State.String(), "EXEC_STATE_"))
		if st.State == agentv1.ExecState_EXEC_STATE_UNSPECIFIED {
			state, exit = "lost", "-" // a journal's lost or failed record
		}
		age := time.Since(time.Unix(0, st.StartedUnixNano)).Round(time.Second)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", st.Id, state, st.Pid, exit, age, st.Command)
	}
	return tw.Flush()
}

func cmdListen(ctx context.Context, s *session, c *call) error {
	fs := flag.NewFlagSet("listen", flag.ContinueOnError)
	tcp := fs.Bool("tcp", false, "")
	http := fs.Bool("http", false, "")
	ssh := fs.Bool("ssh", false, "")
	timeoutFlag := fs.String("timeout", "60s", "")
	pos, err := parseArgs(fs, c.args())
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("listen", "want one port")
	}
	port, err := strconv.Atoi(pos[0])
	if err != nil || port < 1 || port > 65535 {
		return usageErr("listen", "port %q: want 1..65535", pos[0])
	}
	proto := agentv1.ListenerProtocol_LISTENER_PROTOCOL_TCP
	n := 0
	for _, p := range []struct {
		on bool
		v  agentv1.ListenerProtocol
	}{{*tcp, agentv1.ListenerProtocol_LISTENER_PROTOCOL_TCP}, {*http, agentv1.ListenerProtocol_LISTENER_PROTOCOL_HTTP}, {*ssh, agentv1.ListenerProtocol_LISTENER_PROTOCOL_SSH}} {
		if p.on {
			proto, n = p.v, n+1
		}
	}
	if n > 1 {
		return usageErr("listen", "give one of --tcp, --http, --ssh")
	}
	timeout, err := parseDuration(*timeoutFlag)
	if err != nil {
		return err
	}
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	// The agent answers DeadlineExceeded itself, saying what it saw; the
	// call's own deadline is only a backstop.
	ctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	resp, err := s.b.WaitListener(ctx, &agentv1.WaitListenerRequest{Port: uint32(port), Protocol: proto, TimeoutMs: timeout.Milliseconds()})
	if err != nil {
		return err
	}
	line := fmt.Sprintf("ready: port %d (%s) bound at %s after %v", resp.Port, protoName(resp.Protocol), resp.BindAddress,
		time.Duration(resp.ElapsedNs).Round(time.Millisecond))
	if resp.Banner != "" {
		line += fmt.Sprintf(": %q", resp.Banner)
	}
	fmt.Fprintln(s.out, line)
	return nil
}

func protoName(p agentv1.ListenerProtocol) string {
	return strings.ToLower(strings.TrimPrefix(p.String(), "LISTENER_PROTOCOL_"))
}

func cmdFreeze(ctx context.Context, s *session, c *call) error {
	fs := flag.NewFlagSet("freeze", flag.ContinueOnError)
	wd := fs.String("watchdog", "", "")
	pos, err := parseArgs(fs, c.args())
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("freeze", "unexpected arguments %q", pos)
	}
	watchdog, err := parseDuration(*wd)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := s.b.Freeze(ctx, &agentv1.FreezeRequest{WatchdogMs: watchdog.Milliseconds()})
	if err != nil {
		return err
	}
	if resp.AlreadyFrozen {
		fmt.Fprintln(s.out, "already frozen (watchdog re-armed)")
	} else {
		fmt.Fprintf(s.out, "frozen: %s\n", listOrNone(resp.Frozen))
		if len(resp.Hooks) > 0 {
			fmt.Fprintf(s.out, "hooks:  %s\n", strings.Join(resp.Hooks, ", "))
		}
		for _, sk := range resp.Skipped {
			if sk.Reason != "pseudo or network filesystem" && sk.Reason != "excluded" {
				fmt.Fprintf(s.out, "skipped %s (%s): %s\n", sk.MountPoint, sk.FsType, sk.Reason)
			}
		}
	}
	if resp.WatchdogDeadlineUnixNano > 0 {
		fmt.Fprintf(s.out, "thaws by itself in %v unless thawed (thaw)\n",
			time.Until(time.Unix(0, resp.WatchdogDeadlineUnixNano)).Round(time.Second))
	}
	return nil
}

func cmdThaw(ctx context.Context, s *session, c *call) error {
	if len(c.args()) > 0 {
		return usageErr("thaw", "takes no arguments")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := s.b.Thaw(ctx, &agentv1.ThawRequest{})
	if err != nil {
		return err
	}
	if !resp.WasFrozen {
		fmt.Fprintln(s.out, "not frozen")
		return nil
	}
	fmt.Fprintf(s.out, "thawed after %v: %s\n", time.Duration(resp.FrozenForNs).Round(time.Millisecond), listOrNone(resp.Thawed))
	for _, w := range resp.Warnings {
		fmt.Fprintf(s.err, "warning: %s\n", w)
	}
	return nil
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "(no filesystems)"
	}
	return strings.Join(l, " ")
}

func cmdInfo(ctx context.Context, s *session, c *call) error {
	if len(c.args()) > 0 {
		return usageErr("info", "takes no arguments")
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	in, err := s.b.Info(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
	started := time.Unix(0, in.StartedUnixNano)
	fmt.Fprintf(tw, "version\t%s\n", in.Version)
	fmt.Fprintf(tw, "uptime\t%v (since %s)\n", time.Since(started).Round(time.Second), started.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "boot id\t%s\n", in.BootId)
	fmt.Fprintf(tw, "hostname\t%s\n", in.Hostname)
	fmt.Fprintf(tw, "arch\t%s\n", in.Arch)
	fmt.Fprintf(tw, "agent pid\t%d\n", in.Pid)
	fmt.Fprintf(tw, "execs\t%d\n", in.Execs)
	fs, err := s.b.FreezeStatus(ctx, &agentv1.FreezeStatusRequest{})
	switch {
	case status.Code(err) == codes.Unimplemented:
		fmt.Fprintf(tw, "frozen\tunknown (the agent has no Snapshot service)\n")
	case err != nil:
		tw.Flush()
		return err
	case fs.Frozen:
		fmt.Fprintf(tw, "frozen\tyes, since %s: %s\n", time.Unix(0, fs.SinceUnixNano).UTC().Format(time.RFC3339), listOrNone(fs.Mounts))
	default:
		last := ""
		if fs.LastThaw != "" {
			last = " (last thaw: " + fs.LastThaw + ")"
		}
		fmt.Fprintf(tw, "frozen\tno%s\n", last)
	}
	return tw.Flush()
}

// parseDuration accepts Go durations and bare seconds.
func parseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n < 0 {
			return 0, invalid("negative duration %q", s)
		}
		return time.Duration(n * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, invalid("bad duration %q (want e.g. 30s, 2m, or seconds)", s)
	}
	if d < 0 {
		return 0, invalid("negative duration %q", s)
	}
	return d, nil
}

func parseSignal(s string) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, invalid("signal %d out of range", n)
		}
		return n, nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return int(sig), nil
	}
	return 0, invalid("unknown signal %q", s)
}

func signalName(n int) string {
	return strings.TrimPrefix(unix.SignalName(unix.Signal(n)), "SIG")
}
