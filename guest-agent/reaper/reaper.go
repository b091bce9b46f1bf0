// Package reaper makes the guest agent a child subreaper and owns every
// wait(2) in the process.
//
// Orphaned descendants of execs are re-parented to the agent, so something
// must reap them; but a global waitpid(-1) loop would steal the exit status of
// the agent's own children. The reaper resolves this the way Kata's agent
// does: one lock is held while a child is forked and registered, and the same
// lock is held while reaping, so every pid the loop reaps is either a
// registered child (whose status is delivered to its owner) or an orphan.
//
// Consequence for the rest of the agent: start every child through
// Reaper.Start and never call (*exec.Cmd).Wait or os.Process.Wait.
package reaper

import (
	"log/slog"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Reaper reaps all children of the process.
type Reaper struct {
	mu      sync.Mutex
	waiting map[int]chan unix.WaitStatus
	orphans uint64
	log     *slog.Logger
}

// New makes the calling process a child subreaper (PR_SET_CHILD_SUBREAPER)
// and starts reaping on SIGCHLD. Call it once, before starting any child.
func New(log *slog.Logger) (*Reaper, error) {
	if log == nil {
		log = slog.Default()
	}
	if os.Getpid() != 1 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return nil, err
		}
	}
	r := &Reaper{waiting: make(map[int]chan unix.WaitStatus), log: log}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGCHLD)
	go func() {
		for range sigs {
			r.reap()
		}
	}()
	// A child may have exited before Notify took effect.
	go r.reap()
	return r, nil
}

// Start runs start (which forks a child and returns its pid) with the reap
// lock held, and returns a channel that receives the child's wait status
// exactly once.
func (r *Reaper) Start(start func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	r.waiting[pid] = ch
	return pid, ch, nil
}

// Orphans reports how many re-parented orphans have been reaped so far.
func (r *Reaper) Orphans() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

func (r *Reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		if ch, ok := r.waiting[pid]; ok {
			delete(r.waiting, pid)
			ch <- ws
			continue
		}
		r.orphans++
		r.log.Debug("reaped orphan", "pid", pid, "status", ws)
	}
}
