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
	done  chan struct{} // closed once the record is final (or the daemon stops)

	mu      sync.Mutex
	rec     *execstore.Record // last journalled record, with live state
	streams [2]*streamFile
	changed chan struct{} // closed and replaced when output arrives
	flushed execstore.Progress
}

// streamFile is one output stream's file.
type streamFile struct {
	f      *os.File
	offset uint64 // consumed from the agent
	kept   uint64 // stored in the file
	cut    bool   // the cap dropped bytes
	cap    uint64
	synced uint64 // kept at the last fsync
}

// newLive registers an unfinished record. For a recovered record the output
// files are cut back to the journalled sizes (bytes past them were never
// journalled and will be copied again from the agent).
func (d *Daemon) newLive(sb *sandbox.Sandbox, r *execstore.Record, fresh bool) (*liveExec, error) {
	ctx, cancel := context.WithCancel(sb.Context())
	l := &liveExec{d: d, id: r.Id, sb: sb, ctx: ctx, abort: cancel, done: make(chan struct{}), rec: r, changed: make(chan struct{})}
	offsets := [2]uint64{r.StdoutOffset, r.StderrOffset}
	infos := [2]uint64{r.GetStdout().GetKept(), r.GetStderr().GetKept()}
	for i, name := range []string{"stdout", "stderr"} {
		flags := os.O_RDWR | os.O_CREATE
		if fresh {
			flags |= os.O_TRUNC
		}
		f, err := os.OpenFile(d.outPath(r.Id, name), flags, 0o600)
		if err != nil {
			l.close()
			cancel()
			return nil, fmt.Errorf("exec %s: %s file: %w", r.Id, name, err)
		}
		sf := &streamFile{f: f, offset: offsets[i], kept: infos[i], cap: d.cfg.OutputCap}
		l.streams[i] = sf
		fi, err := f.Stat()
		if err != nil {
			l.close()
			cancel()
			return nil, fmt.Errorf("exec %s: %s file: %w", r.Id, name, err)
		}
		switch size := uint64(fi.Size()); {
		case size > sf.kept:
			if err := f.Truncate(int64(sf.kept)); err != nil {
				l.close()
				cancel()
				return nil, fmt.Errorf("exec %s: cut %s back to the journalled %d bytes: %w", r.Id, name, sf.kept, err)
			}
		case size < sf.kept:
			// Cannot happen when fsync is honest (files are synced before their
			// offsets are journalled); resume from what is there if we can.
			d.log.Error("output file shorter than journalled", "exec", r.Id, "stream", name, "size", size, "journalled", sf.kept)
			if sf.offset == sf.kept {
				sf.offset = size
			}
			sf.kept = size
		}
		sf.synced = sf.kept
		sf.cut = i == 0 && r.GetStdout().GetTruncated() || i == 1 && r.GetStderr().GetTruncated()
	}
	l.flushed = l.progressLocked()
	d.mu.Lock()
	d.live[r.Id] = l
	d.mu.Unlock()
	return l, nil
}

func (l *liveExec) close() {
	for _, s := range l.streams {
		if s != nil {
			s.f.Close()
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
// live copy progress).
func (l *liveExec) view() *execstore.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := proto.Clone(l.rec).(*execstore.Record)
	if !execstore.IsFinal(r.State) && r.State == execstore.Running {
		execstore.Advance(r, l.progressLocked())
	}
	return r
}

func (l *liveExec) setRecord(r *execstore.Record) {
	l.mu.Lock()
	l.rec = r
	l.mu.Unlock()
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
	n := uint64(len(p))
	k := uint64(0)
	if s.kept < s.cap {
		k = min(s.cap-s.kept, n)
		if _, err := s.f.WriteAt(p[:k], int64(s.kept)); err != nil {
			l.mu.Unlock()
			return 0, fmt.Errorf("exec %s: store output: %w", l.id, err)
		}
		s.kept += k
	}
	if k < n {
		s.cut = true
	}
	s.offset += n
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

// sync makes the output files durable up to their current sizes and
// returns the progress that is now safe to journal.
func (l *liveExec) sync() (execstore.Progress, error) {
	l.mu.Lock()
	p := l.progressLocked()
	var need []*streamFile
	for _, s := range l.streams {
		if s.kept > s.synced {
			need = append(need, s)
		}
	}
	l.mu.Unlock()
	for _, s := range need {
		if err := s.f.Sync(); err != nil {
			return p, fmt.Errorf("exec %s: fsync output: %w", l.id, err)
		}
	}
	l.mu.Lock()
	l.streams[0].synced = max(l.streams[0].synced, p.StdoutKept)
	l.streams[1].synced = max(l.streams[1].synced, p.StderrKept)
	l.mu.Unlock()
	return p, nil
}

// flusher journals the progress of running execs every FlushInterval, or
// sooner when one has FlushBytes unjournalled; all in one batched commit.
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
			if l.rec.State == execstore.Running && l.progressLocked() != l.flushed {
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
	p, err := l.sync()
	if err != nil {
		l.d.log.Error("flush output", "exec", l.id, "err", err)
		return
	}
	r, err := l.d.store.Update(l.id, func(r *execstore.Record) error { return execstore.Advance(r, p) })
	if err != nil {
		if status.Code(err) != codes.FailedPrecondition { // finished meanwhile: fine
			l.d.log.Error("journal output progress", "exec", l.id, "err", err)
		}
		return
	}
	l.mu.Lock()
	if !execstore.IsFinal(l.rec.State) {
		l.rec = r
	}
	l.flushed = p
	l.mu.Unlock()
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
	r, err := l.d.store.Update(l.id, func(r *execstore.Record) error {
		return execstore.Run(r, execstore.Started{Pid: st.GetPid(), StartedNano: st.GetStartedUnixNano()})
	})
	if err != nil {
		l.d.log.Error("journal running", "exec", l.id, "err", err)
		l.stopped()
		return false
	}
	l.setRecord(r)
	return true
}

// finish journals the final status with the output (fsynced first) and
// releases the agent's copy.
func (l *liveExec) finish(final *agentv1.ExecStatus) {
	p, err := l.sync()
	if err != nil {
		l.d.log.Error("finish", "exec", l.id, "err", err)
		l.stopped()
		return
	}
	r, err := l.d.store.Update(l.id, func(r *execstore.Record) error { return execstore.Exit(r, final, p) })
	if err != nil {
		if status.Code(err) != codes.FailedPrecondition {
			l.d.log.Error("journal exit", "exec", l.id, "err", err)
			l.stopped()
			return
		}
		// Ended meanwhile (RestoreGeneration): keep what the journal says.
		if r, err = l.d.store.Get(l.id); err != nil {
			l.stopped()
			return
		}
	}
	l.setRecord(r)
	rctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	if err := l.sb.Client.Release(rctx, l.id); err != nil && status.Code(err) != codes.NotFound {
		l.d.log.Debug("release on agent", "exec", l.id, "err", err)
	}
	cancel()
}

// end journals a final transition (lost/failed) with the progress so far.
func (l *liveExec) end(f func(r *execstore.Record) error) {
	p, _ := l.sync()
	r, err := l.d.store.Update(l.id, func(r *execstore.Record) error {
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
	l.setRecord(r)
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

// retire removes a live exec whose copier ended.
func (d *Daemon) retire(l *liveExec) {
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
