package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/execstore"
	"github.com/sailbox/sailbox/host-supervisor/sandbox"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// liveExec is an unfinished exec the daemon is driving: resolving its start,
// copying its output, and journalling its progress and end.
type liveExec struct {
	d   *Daemon
	id  string
	sb  *sandbox.Sandbox
	ctx context.Context
	// abort stops the copier (RestoreGeneration already journalled the end).
	abort context.CancelFunc
	done  chan struct{} // closed once the copier ended (the record is final unless the daemon stopped)

	mu      sync.Mutex
	rec     *execstore.Record // last journalled record, with live state
	streams [2]*streamStore
	changed chan struct{} // closed and replaced when output arrives
	flushed execstore.Progress
	// runJournalled: the journal says running (or more); until then the
	// next commit carries the Run transition too.
	runJournalled bool
	started       execstore.Started
	startedAt     time.Time
	retireOnce    sync.Once
}

// newLive registers an unfinished record and prepares its output streams.
func (d *Daemon) newLive(sb *sandbox.Sandbox, r *execstore.Record, fresh bool) (*liveExec, error) {
	ctx, cancel := context.WithCancel(sb.Context())
	l := &liveExec{
		d: d, id: r.Id, sb: sb, ctx: ctx, abort: cancel, done: make(chan struct{}), rec: r, changed: make(chan struct{}),
		runJournalled: r.State != execstore.Accepted,
	}
	var inline execstore.Output
	if !fresh {
		var err error
		if inline, err = d.store.InlineOutput(r.Id); err != nil {
			cancel()
			return nil, err
		}
	}
	offsets := [2]uint64{r.StdoutOffset, r.StderrOffset}
	kept := [2]uint64{r.GetStdout().GetKept(), r.GetStderr().GetKept()}
	cut := [2]bool{r.GetStdout().GetTruncated(), r.GetStderr().GetTruncated()}
	for i, name := range []string{"stdout", "stderr"} {
		s, err := openStream(fresh, d.outPath(r.Id, name), offsets[i], kept[i], cut[i], d.cfg.OutputCap, inline.Data[i], inline.Has[i])
		if err != nil {
			l.close()
			cancel()
			return nil, fmt.Errorf("exec %s: %s: %w", r.Id, name, err)
		}
		l.streams[i] = s
	}
	l.flushed = l.progressLocked()
	d.mu.Lock()
	d.live[r.Id] = l
	d.mu.Unlock()
	return l, nil
}

func (l *liveExec) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.streams {
		if s != nil {
			s.close()
		}
	}
}

// progressLocked is the current copy progress (l.mu held).
func (l *liveExec) progressLocked() execstore.Progress {
	o, e := l.streams[0], l.streams[1]
	return execstore.Progress{
		StdoutOffset: o.offset, StderrOffset: e.offset, StdoutKept: o.kept, StderrKept: e.kept,
		StdoutCut: o.cut, StderrCut: e.cut,
	}
}

// view returns the record as it stands now (journalled fields plus the
// live state and copy progress).
func (l *liveExec) view() *execstore.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := proto.Clone(l.rec).(*execstore.Record)
	if r.State == execstore.Accepted && l.started.Pid != 0 {
		execstore.Run(r, l.started)
	}
	if r.State == execstore.Running {
		execstore.Advance(r, l.progressLocked())
	}
	return r
}

func (l *liveExec) setRecord(r *execstore.Record) {
	l.mu.Lock()
	l.rec = r
	if r.State != execstore.Accepted {
		l.runJournalled = true
	}
	l.mu.Unlock()
}

// setStarted records the agent's acknowledgement (journalled with the next commit).
func (l *liveExec) setStarted(st *agentv1.ExecStatus) {
	l.mu.Lock()
	l.started = execstore.Started{Pid: st.GetPid(), StartedNano: st.GetStartedUnixNano()}
	l.startedAt = time.Now()
	if l.started.Pid == 0 {
		l.started.Pid = -1 // acknowledged, pid unknown
	}
	l.mu.Unlock()
}

// readAt reads stored output of stream i.
func (l *liveExec) readAt(i int, p []byte, off uint64) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streams[i].readAt(p, off)
}

// writer is the io.Writer CopyOutput feeds for one stream.
type writer struct {
	l *liveExec
	i int
}

func (w writer) Write(p []byte) (int, error) {
	l := w.l
	l.mu.Lock()
	s := l.streams[w.i]
	if err := s.write(p); err != nil {
		l.mu.Unlock()
		return 0, fmt.Errorf("exec %s: %w", l.id, err)
	}
	journalled := l.flushed.StdoutOffset
	if w.i == 1 {
		journalled = l.flushed.StderrOffset
	}
	unflushed := s.offset - journalled
	ch := l.changed
	l.changed = make(chan struct{})
	l.mu.Unlock()
	close(ch)
	if unflushed >= l.d.cfg.FlushBytes {
		select {
		case l.d.kick <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// sync makes the stored output durable up to now: spilled streams are
// fsynced; small ones are returned to go into the journal commit. The
// progress returned is what that commit may record.
func (l *liveExec) sync() (execstore.Progress, execstore.Output, error) {
	l.mu.Lock()
	p := l.progressLocked()
	var out execstore.Output
	var need []*os.File
	for i, s := range l.streams {
		if s.f == nil {
			out.Data[i], out.Has[i] = append([]byte(nil), s.mem...), true
		} else if s.kept > s.synced {
			need = append(need, s.f)
		}
	}
	l.mu.Unlock()
	for _, f := range need {
		if err := f.Sync(); err != nil {
			return p, out, fmt.Errorf("exec %s: fsync output: %w", l.id, err)
		}
	}
	l.mu.Lock()
	l.streams[0].synced = max(l.streams[0].synced, p.StdoutKept)
	l.streams[1].synced = max(l.streams[1].synced, p.StderrKept)
	l.mu.Unlock()
	return p, out, nil
}

// commit journals f (a transition) with the output so far, after the Run
// transition when the agent's acknowledgement is not journalled yet.
func (l *liveExec) commit(f func(r *execstore.Record, p execstore.Progress) error) (*execstore.Record, error) {
	p, out, err := l.sync()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	started, needRun := l.started, !l.runJournalled && l.started.Pid != 0
	l.mu.Unlock()
	r, err := l.d.store.UpdateOutput(l.id, out, func(r *execstore.Record) error {
		if needRun && r.State == execstore.Accepted {
			if err := execstore.Run(r, started); err != nil {
				return err
			}
		}
		return f(r, p)
	})
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	// Commits of one exec can share a batch and return in any order: never
	// let an earlier one overwrite a final record.
	if !execstore.IsFinal(l.rec.State) {
		l.rec = r
	}
	if r.State != execstore.Accepted {
		l.runJournalled = true
	}
	if p.StdoutOffset >= l.flushed.StdoutOffset && p.StderrOffset >= l.flushed.StderrOffset {
		l.flushed = p
	}
	l.mu.Unlock()
	return r, nil
}

// dirty reports whether the journal lags behind (l.mu held).
func (l *liveExec) dirtyLocked() bool {
	if execstore.IsFinal(l.rec.State) {
		return false
	}
	if !l.runJournalled {
		// Short execs journal running together with their exit; a longer
		// one gets it within about one interval.
		return l.started.Pid != 0 && (time.Since(l.startedAt) >= l.d.cfg.FlushInterval || l.progressLocked() != l.flushed)
	}
	return l.progressLocked() != l.flushed
}

// flusher journals the state and progress of running execs every
// FlushInterval, or sooner when one has FlushBytes unjournalled; all in one
// batched commit.
func (d *Daemon) flusher() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		case <-d.kick:
		}
		d.mu.Lock()
		var dirty []*liveExec
		for _, l := range d.live {
			l.mu.Lock()
			if l.dirtyLocked() {
				dirty = append(dirty, l)
			}
			l.mu.Unlock()
		}
		d.mu.Unlock()
		var wg sync.WaitGroup
		for _, l := range dirty {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l.flush()
			}()
		}
		wg.Wait()
	}
}

func (l *liveExec) flush() {
	_, err := l.commit(func(r *execstore.Record, p execstore.Progress) error {
		if r.State != execstore.Running {
			return nil // accepted with no acknowledgement yet, or final: nothing to record
		}
		return execstore.Advance(r, p)
	})
	if err != nil {
		l.d.log.Error("journal output progress", "exec", l.id, "err", err)
	}
}

// follow drives an unfinished exec to its end: resolve an accepted record,
// journal running, copy output until the final status, journal it, release
// the agent's copy. lostReason is used when an accepted record turns out
// unknown to the agent.
func (d *Daemon) follow(l *liveExec, lostReason string) {
	defer d.retire(l)
	cl := l.sb.Client
	if l.view().State == execstore.Accepted {
		st, err := cl.Get(l.ctx, l.id)
		switch {
		case l.ctx.Err() != nil:
			l.stopped()
			return
		case status.Code(err) == codes.NotFound:
			l.end(func(r *execstore.Record) error { return execstore.Lose(r, lostReason) })
			return
		case err != nil:
			l.end(func(r *execstore.Record) error {
				return execstore.Lose(r, "agent error while resolving the start: "+err.Error())
			})
			return
		}
		if !l.journalRun(st) {
			return
		}
	}
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		l.mu.Lock()
		off := agentclient.Offsets{Stdout: l.streams[0].offset, Stderr: l.streams[1].offset}
		l.mu.Unlock()
		final, _, err := cl.CopyOutput(l.ctx, l.id, off, true, writer{l, 0}, writer{l, 1})
		switch {
		case err == nil && final != nil && final.State != agentv1.ExecState_EXEC_STATE_RUNNING:
			l.finish(final)
			return
		case l.ctx.Err() != nil:
			l.stopped()
			return
		case status.Code(err) == codes.NotFound:
			l.end(func(r *execstore.Record) error { return execstore.Lose(r, reasonUnknownToAgent) })
			return
		case status.Code(err) == codes.OutOfRange:
			l.end(func(r *execstore.Record) error {
				return execstore.Lose(r, "output rewound on the agent (sandbox restored): "+err.Error())
			})
			return
		case isLocalWrite(err):
			l.end(func(r *execstore.Record) error {
				return execstore.Lose(r, "supervisor could not store the output: "+err.Error())
			})
			return
		case attempt >= 5:
			// A broken or hostile agent: give up on this exec, not on the sandbox.
			l.end(func(r *execstore.Record) error {
				return execstore.Lose(r, fmt.Sprintf("agent protocol error: %v", err))
			})
			return
		}
		d.log.Warn("copy output", "exec", l.id, "sandbox", l.sb.ID, "attempt", attempt, "err", err)
		select {
		case <-l.ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func isLocalWrite(err error) bool {
	var pe *os.PathError
	return errors.As(err, &pe)
}

// journalRun moves the record to running (the agent acknowledged it).
func (l *liveExec) journalRun(st *agentv1.ExecStatus) bool {
	l.setStarted(st)
	if _, err := l.commit(func(r *execstore.Record, p execstore.Progress) error { return nil }); err != nil {
		l.d.log.Error("journal running", "exec", l.id, "err", err)
		l.stopped()
		return false
	}
	return true
}

// finish journals the final status with the output (fsynced or inline) and
// then releases the agent's copy.
func (l *liveExec) finish(final *agentv1.ExecStatus) {
	l.mu.Lock()
	if l.started.Pid == 0 {
		l.started = execstore.Started{Pid: final.Pid, StartedNano: final.StartedUnixNano}
	}
	l.mu.Unlock()
	_, err := l.commit(func(r *execstore.Record, p execstore.Progress) error { return execstore.Exit(r, final, p) })
	if err != nil {
		if status.Code(err) != codes.FailedPrecondition {
			l.d.log.Error("journal exit", "exec", l.id, "err", err)
			l.stopped()
			return
		}
		// Ended meanwhile (RestoreGeneration): keep what the journal says.
		r, err := l.d.store.Get(l.id)
		if err != nil {
			l.stopped()
			return
		}
		l.setRecord(r)
	}
	// The result is durable: answer the waiters before talking to the agent again.
	l.d.retire(l)
	rctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	if err := l.sb.Client.Release(rctx, l.id); err != nil && status.Code(err) != codes.NotFound {
		l.d.log.Debug("release on agent", "exec", l.id, "err", err)
	}
	cancel()
}

// end journals a final transition (lost/failed) with the progress so far.
func (l *liveExec) end(f func(r *execstore.Record) error) {
	r, err := l.commit(func(r *execstore.Record, p execstore.Progress) error {
		if r.State == execstore.Running {
			if err := execstore.Advance(r, p); err != nil {
				return err
			}
		}
		return f(r)
	})
	if err != nil {
		if r2, err2 := l.d.store.Get(l.id); err2 == nil && execstore.IsFinal(r2.State) {
			l.setRecord(r2)
			return
		}
		l.d.log.Error("journal end", "exec", l.id, "err", err)
		return
	}
	l.d.log.Info("exec ended", "exec", l.id, "state", execstore.StateName(r.State), "reason", r.Reason)
}

// stopped handles a copier stopped by its context: the daemon is closing
// (leave the record for the next start), the exec was ended by
// RestoreGeneration (reload it), or the sandbox was removed (lost).
func (l *liveExec) stopped() {
	if l.d.ctx.Err() != nil {
		return
	}
	if l.sb.Removed() {
		l.end(func(r *execstore.Record) error { return execstore.Lose(r, "sandbox "+l.sb.ID+" was removed") })
		return
	}
	if r, err := l.d.store.Get(l.id); err == nil {
		l.setRecord(r)
	}
}

// retire removes a live exec whose record is final (or whose copier
// stopped) and wakes its waiters. Idempotent.
func (d *Daemon) retire(l *liveExec) {
	l.retireOnce.Do(func() { d.doRetire(l) })
}

func (d *Daemon) doRetire(l *liveExec) {
	d.mu.Lock()
	if d.live[l.id] == l {
		delete(d.live, l.id)
	}
	d.mu.Unlock()
	l.close()
	l.mu.Lock()
	ch := l.changed
	l.changed = make(chan struct{})
	l.mu.Unlock()
	close(ch)
	close(l.done)
}
