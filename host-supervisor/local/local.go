package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
)

// Options configure a local sandbox.
type Options struct {
	// AgentBin is the guest-agent binary; "" = guest-agent next to this
	// executable, then in PATH.
	AgentBin string
	// StateDir holds the agent's socket, scratch state and log; it is kept
	// after Close. "" = a private directory removed at Close.
	StateDir string
	// Dir is the working directory of the agent and its commands ("" = this
	// process's).
	Dir string
	// Plain runs the agent without namespaces even as root.
	Plain bool
	// Notices (what isolation there is, where things are) go here.
	Notices io.Writer
	// ReadyTimeout bounds the wait for the agent to answer (default 15s).
	ReadyTimeout time.Duration
	Logger       *slog.Logger
}

// Sandbox is a running local sandbox.
type Sandbox struct {
	// Addr is the agent's address (unix:///...).
	Addr string
	// Dir is the private directory (socket, agent state, log).
	Dir string
	// Isolated reports whether the agent runs in its own namespaces.
	Isolated bool
	// PrivateTmp reports whether the sandbox has its own /tmp.
	PrivateTmp bool
	// FreezeRoot is the only place a Freeze may freeze filesystems.
	FreezeRoot string
	// Log is the agent's log file.
	Log string

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	keepDir bool
	log     *slog.Logger
}

// Start starts the agent and waits until it answers.
func Start(ctx context.Context, o Options) (*Sandbox, error) {
	if o.Notices == nil {
		o.Notices = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ReadyTimeout <= 0 {
		o.ReadyTimeout = 15 * time.Second
	}
	bin, err := findAgent(o.AgentBin)
	if err != nil {
		return nil, err
	}
	isolate := !o.Plain && os.Geteuid() == 0
	s := &Sandbox{exited: make(chan struct{}), log: o.Logger}
	if o.StateDir != "" {
		if s.Dir, err = filepath.Abs(o.StateDir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(s.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("state dir %s: %w", s.Dir, err)
		}
		s.keepDir = true
	} else if s.Dir, err = privateDir(isolate); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.removeDir()
		}
	}()
	sock := filepath.Join(s.Dir, "agent.sock")
	if len(sock) > 100 {
		return nil, fmt.Errorf("state dir %s: path too long for a unix socket (%d bytes)", s.Dir, len(sock))
	}
	s.Addr = "unix://" + sock
	s.FreezeRoot = filepath.Join(s.Dir, "freeze-root")
	s.Log = filepath.Join(s.Dir, "agent.log")
	for _, d := range []string{s.FreezeRoot, filepath.Join(s.Dir, "freeze-hooks.d")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	args := []string{
		"--listen", s.Addr,
		"--state-dir", filepath.Join(s.Dir, "agent"),
		"--freeze-root", s.FreezeRoot,
		"--freeze-hooks", filepath.Join(s.Dir, "freeze-hooks.d"),
		"--log-level", "warn",
	}
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()

	// The private /tmp would hide the socket if the directory were under
	// it, and the working directory the agent's commands start in.
	cwd := o.Dir
	if cwd == "" {
		cwd, _ = os.Getwd()
	}
	tmpShared := within(s.Dir, "/tmp") || (cwd != "" && within(cwd, "/tmp"))
	launch := func(isolate bool) error {
		s.PrivateTmp = isolate && !tmpShared
		if isolate {
			s.cmd = isolatedCommand(bin, args, s.PrivateTmp)
		} else {
			s.cmd = plainCommand(bin, args)
		}
		s.cmd.Stdout, s.cmd.Stderr = logf, logf
		s.cmd.Env = agentEnv()
		s.cmd.Dir = o.Dir
		if err := s.start(); err != nil {
			s.cmd = nil
			return fmt.Errorf("start agent %s: %w", bin, err)
		}
		if err := s.waitReady(ctx, o.ReadyTimeout); err != nil {
			s.stop()
			return err
		}
		return nil
	}
	err = launch(isolate)
	if err != nil && isolate && (isNamespaceDenied(err) || strings.Contains(err.Error(), initArg0+":")) {
		// Root without the right to make namespaces or mounts (a restricted
		// container): fall back to a plain child.
		fmt.Fprintf(o.Notices, "note: cannot isolate the agent (%v): running it as a plain child process\n", firstLine(err))
		isolate = false
		err = launch(false)
	}
	if err != nil {
		return nil, err
	}
	s.Isolated = isolate
	if isolate {
		tmp := ", private /tmp and /dev/shm"
		if !s.PrivateTmp {
			tmp = "; it shares the host's /tmp because the working directory or state dir is in it"
		}
		fmt.Fprintf(o.Notices, "local sandbox: agent isolated in new mount, PID, UTS and IPC namespaces (PID 1 there%s); the host's files are visible; freeze is confined to %s\n", tmp, s.FreezeRoot)
	} else {
		why := "needs root"
		switch {
		case o.Plain:
			why = "--plain"
		case os.Geteuid() == 0:
			why = "no namespaces here"
		}
		fmt.Fprintf(o.Notices, "note: not isolated (%s): the agent runs as a plain child process with your user's view and rights on this machine; freeze is confined to %s\n", why, s.FreezeRoot)
	}
	ok = true
	return s, nil
}

// start starts the agent from a locked OS thread that lives until the
// agent has exited: the parent death signal follows the forking thread,
// not the process.
func (s *Sandbox) start() error {
	errc := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := s.cmd.Start(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		s.waitErr = s.cmd.Wait()
		close(exited)
	}()
	if err := <-errc; err != nil {
		return err
	}
	s.exited = exited
	return nil
}

func (s *Sandbox) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cl, err := agentclient.New(s.Addr, agentclient.Options{DialTimeout: timeout})
	if err != nil {
		return err
	}
	defer cl.Close()
	ready := make(chan error, 1)
	go func() { ready <- cl.Ping(ctx) }()
	select {
	case err := <-ready:
		if err != nil {
			return fmt.Errorf("agent did not answer on %s: %v%s", s.Addr, err, s.logTail())
		}
		return nil
	case <-s.exited:
		cancel()
		return fmt.Errorf("agent exited at start (%v)%s", s.waitErr, s.logTail())
	}
}

func (s *Sandbox) logTail() string {
	b, err := os.ReadFile(s.Log)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return "; agent log:\n" + strings.TrimRight(string(b), "\n")
}

func firstLine(err error) string {
	m := err.Error()
	if i := strings.IndexByte(m, '\n'); i >= 0 {
		return m[:i]
	}
	return m
}

// Pid is the agent's process id (as seen from this process).
func (s *Sandbox) Pid() int { return s.cmd.Process.Pid }

// Gone is closed when the agent has exited.
func (s *Sandbox) Gone() <-chan struct{} { return s.exited }

// Close stops the agent and everything it started, and removes the private
// directory (a --state-dir is kept).
func (s *Sandbox) Close() error {
	s.stop()
	s.removeDir()
	return nil
}

// stop: SIGTERM (the agent kills its execs' process groups), SIGKILL after
// a grace period, then whatever is still in the agent's session.
func (s *Sandbox) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	pid := s.cmd.Process.Pid
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(3 * time.Second):
			s.log.Warn("agent did not stop on SIGTERM; killing it", "pid", pid)
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
	killSession(pid)
}

func (s *Sandbox) removeDir() {
	if s.keepDir || s.Dir == "" {
		return
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		s.log.Warn("remove local sandbox dir", "dir", s.Dir, "err", err)
	}
}

// findAgent resolves the guest-agent binary.
func findAgent(bin string) (string, error) {
	if bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("--agent-bin: %w", err)
		}
		return filepath.Abs(bin)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "guest-agent")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("guest-agent"); err == nil {
		return filepath.Abs(p)
	}
	return "", errors.New("guest-agent not found next to this executable nor in PATH (run make build, or give --agent-bin)")
}

// privateDir makes the directory for the socket and the agent's state. As
// root it prefers /run (tmpfs, and outside the sandbox's private /tmp).
func privateDir(isolate bool) (string, error) {
	bases := []string{}
	if isolate {
		bases = append(bases, "/run/sailbox")
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		bases = append(bases, filepath.Join(d, "sailbox"))
	}
	bases = append(bases, os.TempDir())
	var firstErr error
	for _, b := range bases {
		if err := os.MkdirAll(b, 0o700); err != nil {
			firstErr = cmpErr(firstErr, err)
			continue
		}
		sweep(b)
		d, err := os.MkdirTemp(b, dirPrefix)
		if err != nil {
			firstErr = cmpErr(firstErr, err)
			continue
		}
		return d, nil
	}
	return "", fmt.Errorf("no place for the local sandbox's directory: %w", firstErr)
}

// dirPrefix names the private directories (sweep finds stale ones by it).
const dirPrefix = "sailbox-local-"

// sweep removes private directories that killed sessions left behind (a
// SIGKILLed host-supervisor cannot clean up; its agent died with it): ours,
// older than a minute, with an agent log and a socket nobody listens on.
func sweep(base string) {
	ents, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), dirPrefix) {
			continue
		}
		d := filepath.Join(base, e.Name())
		fi, err := os.Stat(d)
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || int(st.Uid) != os.Geteuid() || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "agent.log")); err != nil {
			continue
		}
		c, err := net.Dial("unix", filepath.Join(d, "agent.sock"))
		if err == nil {
			c.Close()
			continue // a live session
		}
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
			os.RemoveAll(d)
		}
	}
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	p = filepath.Clean(p)
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// agentEnv is this process's environment without what would point the
// sandbox's commands back at an agent.
func agentEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SAILBOX_AGENT=") {
			out = append(out, kv)
		}
	}
	return out
}
