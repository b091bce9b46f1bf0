package repl

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// leaveByte is Ctrl-]: it ends a shell session from the local side.
const leaveByte = 0x1d

// defaultShell runs the user's shell where there is one ($SHELL is set in a
// local sandbox), else /bin/sh.
const defaultShell = `exec "${SHELL:-/bin/sh}"`

// cmdShell runs a command on a pty in the sandbox with the local terminal
// in raw mode: keystrokes go to it (Ctrl-C included), its output comes
// back, window size changes are forwarded. Ctrl-] leaves: the remote side
// gets SIGHUP (as when a terminal closes), then SIGKILL if it lingers.
func cmdShell(ctx context.Context, s *session, c *call) error {
	if !s.interactive {
		return status.Error(codes.FailedPrecondition, "shell: needs a terminal (standard input is not one)")
	}
	command := defaultShell
	if len(c.words) > 1 {
		command = strings.TrimSpace(c.line[c.words[1].start:])
	}
	fd := int(os.Stdin.Fd())
	rows, cols := termSize(fd)
	termName := os.Getenv("TERM")
	if termName == "" {
		termName = "xterm-256color"
	}
	id := newExecID()
	sctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	_, err := s.b.Start(sctx, &agentv1.StartRequest{
		Id: id, Command: command, Tty: true, Stdin: true, Rows: rows, Cols: cols, Env: []string{"TERM=" + termName},
	})
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.b.Release(rctx, id)
		cancel()
	}()
	fmt.Fprintf(s.out, "[shell %s: Ctrl-] leaves]\n", id)

	old, err := term.MakeRaw(fd)
	if err != nil {
		s.b.Signal(ctx, id, int(syscall.SIGKILL))
		return status.Errorf(codes.FailedPrecondition, "shell: raw mode: %v", err)
	}
	s.mu.Lock()
	s.rawMode = true
	s.mu.Unlock()
	defer func() {
		term.Restore(fd, old)
		s.mu.Lock()
		s.rawMode = false
		s.mu.Unlock()
	}()

	fctx, stop := context.WithCancel(ctx)
	defer stop()

	// Window size changes.
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	go func() {
		for {
			select {
			case <-fctx.Done():
				return
			case <-winch:
				r, c := termSize(fd)
				s.b.Resize(fctx, id, r, c)
			}
		}
	}()

	// Keystrokes, until Ctrl-] or the session ends.
	in, err := newStdinReader(fd)
	if err != nil {
		return err
	}
	left := make(chan struct{})
	inDone := make(chan struct{})
	go func() {
		defer close(inDone)
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if err != nil {
				return
			}
			data := buf[:n]
			i := bytes.IndexByte(data, leaveByte)
			if i >= 0 {
				data = data[:i]
			}
			if len(data) > 0 {
				if s.b.WriteStdin(fctx, id, data) != nil {
					return
				}
			}
			if i >= 0 {
				close(left)
				return
			}
		}
	}()
	defer func() {
		in.Stop()
		<-inDone
		in.Close()
	}()
	go func() {
		select {
		case <-left:
			// Hang up like a closed terminal; kill what lingers.
			s.b.Signal(fctx, id, int(syscall.SIGHUP))
			select {
			case <-fctx.Done():
			case <-time.After(2 * time.Second):
				s.b.Signal(fctx, id, int(syscall.SIGKILL))
			}
		case <-fctx.Done():
		}
	}()

	final, _, err := s.b.CopyOutput(ctx, id, agentclient.Offsets{}, true, s.out, s.out)
	stop()
	term.Restore(fd, old)
	select {
	case <-left:
		fmt.Fprintf(s.out, "\n[left shell %s]\n", id)
		return nil
	default:
	}
	if err != nil {
		return err
	}
	return s.finalStatus(final)
}

// termSize returns the terminal's size, 24×80 when it cannot be read.
func termSize(fd int) (rows, cols uint32) {
	c, r, err := term.GetSize(fd)
	if err != nil || r <= 0 || c <= 0 {
		return 24, 80
	}
	return uint32(r), uint32(c)
}
