package repl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/chzyer/readline"
	clog "github.com/containerd/log"
	"github.com/sailbox/sailbox/internal/errstatus"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit statuses, as in the host-supervisor CLI (DESIGN.md §3).
const (
	ExitTimedOut = 124
	ExitError    = 125
)

// Config configures a session.
type Config struct {
	Backend Backend
	In      io.Reader
	Out     io.Writer
	Err     io.Writer
	// Prompt shown in interactive mode (default "sailbox> ").
	Prompt string
	// HistoryFile keeps the interactive history; "" = DefaultHistoryFile(),
	// "-" = none.
	HistoryFile string
	// Gone, when not nil, is closed when the backend has gone for good (the
	// local agent exited): the session ends with an error.
	Gone <-chan struct{}
	// Banner is printed once when an interactive session starts.
	Banner string
	// KeepFinished keeps foreground execs after they end (a journal keeps
	// them); otherwise the REPL releases those it named itself.
	KeepFinished bool
}

// session is one REPL session.
type session struct {
	cfg         Config
	b           Backend
	out, err    io.Writer
	interactive bool
	commands    map[string]*command

	mu      sync.Mutex
	fg      string             // id of the foreground exec that Ctrl-C signals
	fgInts  int                // Ctrl-Cs sent to it
	cancel  context.CancelFunc // cancels the running command (when no fg exec)
	rawMode bool               // a shell session owns the terminal
	intr    bool               // Ctrl-C was pressed during the current command
}

// Run runs a session until exit, end of input or (not interactive) the
// first failure, and returns the exit status.
func Run(ctx context.Context, cfg Config) int {
	// ttrpc logs a late reply to a cancelled call (Ctrl-C during wait) as an
	// error on stderr, which would garble the screen: the REPL reports its
	// own errors.
	clog.SetLevel("fatal")
	s := newSession(cfg)
	if s.interactive {
		return s.runInteractive(ctx)
	}
	return s.runScript(ctx)
}

func newSession(cfg Config) *session {
	if cfg.Prompt == "" {
		cfg.Prompt = "sailbox> "
	}
	s := &session{cfg: cfg, b: cfg.Backend, out: cfg.Out, err: cfg.Err, commands: commandTable()}
	if f, ok := cfg.In.(*os.File); ok && f == os.Stdin && term.IsTerminal(int(f.Fd())) {
		s.interactive = true
	}
	return s
}

// exitError is a remote command's non-zero exit: a failure that is not an
// error of the supervisor or the agent.
type exitError struct {
	code int
	what string // "exit status 1", "killed by signal 9 (KILL)", "timed out"
}

func (e *exitError) Error() string { return e.what }

// statusCode maps a command's error to an exit status.
func statusCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return ExitError
}

// report prints a failed command's error on one line.
func (s *session) report(err error) {
	var ee *exitError
	if errors.As(err, &ee) {
		fmt.Fprintf(s.err, "[%s]\n", ee.what)
		return
	}
	fmt.Fprintln(s.err, errstatus.Line(err))
}

func invalid(format string, a ...any) error {
	return status.Errorf(codes.InvalidArgument, format, a...)
}

// errExit ends the session normally.
var errExit = errors.New("exit")

// execute runs one command line. Ctrl-C while it runs interrupts the
// foreground remote command, or else cancels the command.
func (s *session) execute(ctx context.Context, line string) error {
	ws, open := splitWords(line)
	if open {
		return invalid("unterminated quote")
	}
	if len(ws) == 0 || strings.HasPrefix(ws[0].text, "#") {
		return nil
	}
	c, ok := s.commands[ws[0].text]
	if !ok {
		return invalid("unknown command %q (type help)", ws[0].text)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.cfg.Gone != nil {
		go func() {
			select {
			case <-s.cfg.Gone:
				cancel()
			case <-cctx.Done():
			}
		}()
	}
	s.mu.Lock()
	s.cancel, s.intr = cancel, false
	s.mu.Unlock()
	err := c.run(cctx, s, &call{line: line, words: ws})
	s.mu.Lock()
	s.cancel = nil
	intr := s.intr
	s.mu.Unlock()
	switch {
	case err != nil && s.gone():
		return status.Error(codes.Unavailable, "the agent has exited")
	case intr && errstatus.Code(err) == codes.Canceled:
		return status.Error(codes.Canceled, "interrupted")
	}
	return err
}

func (s *session) gone() bool {
	if s.cfg.Gone == nil {
		return false
	}
	select {
	case <-s.cfg.Gone:
		return true
	default:
		return false
	}
}

// interrupt handles Ctrl-C (SIGINT) while a command runs.
func (s *session) interrupt() {
	s.mu.Lock()
	id, cancel := s.fg, s.cancel
	if id != "" {
		s.fgInts++
	}
	n, raw := s.fgInts, s.rawMode
	if !raw {
		s.intr = true
	}
	s.mu.Unlock()
	switch {
	case raw:
		// A shell session forwards the byte itself.
	case id != "":
		// SIGINT to the remote process group. The third Ctrl-C sends
		// SIGKILL and stops following it (a command that ignores SIGINT, or
		// an agent that no longer answers, must not hold the prompt).
		sig := syscall.SIGINT
		if n >= 3 {
			sig = syscall.SIGKILL
			if cancel != nil {
				defer cancel()
			}
		}
		go func() {
			ctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			// An exec that just ended refuses signals: nothing to say then.
			if err := s.b.Signal(ctx, id, int(sig)); err != nil && (errstatus.Code(err) == codes.Unavailable || errstatus.Code(err) == codes.DeadlineExceeded) {
				fmt.Fprintf(s.err, "\nerror: %s: signal exec %s: %s\n", errstatus.Code(err), id, errstatus.Message(err))
				if cancel != nil {
					cancel()
				}
			}
		}()
	case cancel != nil:
		cancel()
	}
}

// setForeground makes id the exec that Ctrl-C signals ("" for none).
func (s *session) setForeground(id string) {
	s.mu.Lock()
	s.fg, s.fgInts = id, 0
	s.mu.Unlock()
}

func (s *session) handleSignals() (stop func()) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-sigs:
				s.interrupt()
			}
		}
	}()
	return func() { signal.Stop(sigs); close(done) }
}

// runScript reads commands line by line and stops at the first failure.
func (s *session) runScript(ctx context.Context) int {
	defer s.handleSignals()()
	sc := bufio.NewScanner(s.cfg.In)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		err := s.execute(ctx, sc.Text())
		if errors.Is(err, errExit) {
			return exitCodeOf(err)
		}
		if err != nil {
			s.report(err)
			return statusCode(err)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(s.err, "error: %s: read commands (line %d): %v\n", codes.InvalidArgument, n+1, err)
		return ExitError
	}
	return 0
}

// exitRequest carries `exit N`.
type exitRequest struct{ code int }

func (e *exitRequest) Error() string { return "exit" }
func (e *exitRequest) Is(target error) bool {
	return target == errExit
}

func exitCodeOf(err error) int {
	var er *exitRequest
	if errors.As(err, &er) {
		return er.code
	}
	return 0
}

// runInteractive reads commands with line editing, history and completion.
// Errors are printed and the session goes on.
func (s *session) runInteractive(ctx context.Context) int {
	hist := s.cfg.HistoryFile
	if hist == "" {
		hist = DefaultHistoryFile()
	}
	if hist == "-" {
		hist = ""
	}
	if hist != "" {
		// Private: commands may carry secrets.
		f, err := os.OpenFile(hist, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if errors.Is(err, os.ErrNotExist) {
			if err = os.MkdirAll(dirOf(hist), 0o700); err == nil {
				f, err = os.OpenFile(hist, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
			}
		}
		if err != nil {
			fmt.Fprintf(s.err, "warning: history %s: %v (history is not kept)\n", hist, err)
			hist = ""
		} else {
			f.Close()
		}
	}
	out := &lastByteWriter{w: s.out}
	s.out = out
	rl, err := readline.NewEx(&readline.Config{
		Prompt:            s.cfg.Prompt,
		HistoryFile:       hist,
		HistoryLimit:      1000,
		HistorySearchFold: true,
		AutoComplete:      &completer{s: s},
		InterruptPrompt:   "^C",
		EOFPrompt:         "exit",
		Stdout:            s.cfg.Out,
		Stderr:            s.cfg.Err,
	})
	if err != nil {
		fmt.Fprintf(s.err, "error: %s: terminal: %v\n", codes.Internal, err)
		return ExitError
	}
	defer rl.Close()
	defer s.handleSignals()()
	if s.cfg.Gone != nil {
		go func() {
			<-s.cfg.Gone
			rl.Close() // ends a pending Readline
		}()
	}
	if s.cfg.Banner != "" {
		fmt.Fprintln(s.out, s.cfg.Banner)
	}
	for {
		line, err := rl.Readline()
		if s.gone() {
			fmt.Fprintln(s.err, "\nerror: Unavailable: the agent has exited")
			return ExitError
		}
		if errors.Is(err, readline.ErrInterrupt) {
			continue
		}
		if errors.Is(err, io.EOF) {
			return 0
		}
		if err != nil {
			fmt.Fprintf(s.err, "error: %s: read command: %v\n", codes.Internal, err)
			return ExitError
		}
		err = s.execute(ctx, line)
		if errors.Is(err, errExit) {
			return exitCodeOf(err)
		}
		s.mu.Lock()
		intr := s.intr
		s.mu.Unlock()
		if out.midLine() || intr {
			// The terminal echoed ^C without a newline.
			fmt.Fprintln(s.out)
		}
		if err != nil {
			s.report(err)
		}
		if s.gone() {
			fmt.Fprintln(s.err, "error: Unavailable: the agent has exited")
			return ExitError
		}
	}
}

// lastByteWriter remembers whether the last byte written ended a line.
type lastByteWriter struct {
	w    io.Writer
	mu   sync.Mutex
	last byte
}

func (l *lastByteWriter) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if n > 0 {
		l.mu.Lock()
		l.last = p[n-1]
		l.mu.Unlock()
	}
	return n, err
}

func (l *lastByteWriter) midLine() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.last != 0 && l.last != '\n'
	l.last = 0
	return m
}
