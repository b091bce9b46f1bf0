package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/execstore"
	"github.com/sailbox/sailbox/host-supervisor/sandbox"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/ids"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// AddSandbox registers a sandbox.
func (d *Daemon) AddSandbox(id, agent string, labels map[string]string) (*supervisorv1.Sandbox, error) {
	sb, err := d.reg.Add(id, agent, labels)
	if err != nil {
		return nil, err
	}
	return sb.Proto(), nil
}

// RemoveSandbox forgets a sandbox; its unfinished execs become lost.
func (d *Daemon) RemoveSandbox(id string) error {
	if err := d.reg.Remove(id); err != nil {
		return err
	}
	d.vmmMu.Lock()
	defer d.vmmMu.Unlock()
	if _, ok := d.vmms[id]; !ok {
		return nil
	}
	d.detachLocked(id)
	return d.saveVMMsLocked()
}

// ListSandboxes lists the registered sandboxes.
func (d *Daemon) ListSandboxes() []*supervisorv1.Sandbox {
	var out []*supervisorv1.Sandbox
	for _, sb := range d.reg.List() {
		p := sb.Proto()
		p.State = d.runState(sb.ID)
		out = append(out, p)
	}
	return out
}

// Checkpointed records that checkpoint gen of the sandbox was taken.
func (d *Daemon) Checkpointed(id string, gen uint64) (*supervisorv1.Sandbox, error) {
	sb, err := d.reg.Get(id)
	if err != nil {
		return nil, err
	}
	if cur := sb.Generation(); gen <= cur {
		return nil, status.Errorf(codes.InvalidArgument, "sandbox %s: checkpoint generation %d is not after the current %d", id, gen, cur)
	}
	if sb, err = d.reg.SetGeneration(id, gen); err != nil {
		return nil, err
	}
	return sb.Proto(), nil
}

// RestoreGeneration records that the sandbox was restored from checkpoint
// gen: its unfinished execs accepted at or after that checkpoint are lost
// ("not replayed"), and never sent again.
func (d *Daemon) RestoreGeneration(id string, gen uint64) (*supervisorv1.RestoreGenerationResponse, error) {
	sb, err := d.reg.Get(id)
	if err != nil {
		return nil, err
	}
	if cur := sb.Generation(); gen > cur {
		return nil, status.Errorf(codes.InvalidArgument, "sandbox %s: no checkpoint %d (the last is %d)", id, gen, cur)
	}
	lost, err := d.store.LoseFrom(id, gen, fmt.Sprintf("not replayed: sandbox restored to checkpoint %d", gen))
	if err != nil {
		return nil, err
	}
	for _, eid := range lost {
		d.mu.Lock()
		l := d.live[eid]
		d.mu.Unlock()
		if l != nil {
			l.abort()
			<-l.done
		}
	}
	if sb, err = d.reg.SetGeneration(id, gen); err != nil {
		return nil, err
	}
	d.log.Info("sandbox restored", "sandbox", id, "generation", gen, "lost", len(lost))
	return &supervisorv1.RestoreGenerationResponse{Sandbox: sb.Proto(), Lost: lost}, nil
}

func validateStart(req *agentv1.StartRequest) error {
	switch {
	case req == nil:
		return status.Error(codes.InvalidArgument, "no request")
	case req.Id != "" && !ids.Valid(req.Id):
		return status.Errorf(codes.InvalidArgument, "exec id %q: want 1-128 characters of [A-Za-z0-9._-]", req.Id)
	case strings.TrimSpace(req.Command) == "" && len(req.Argv) == 0:
		return status.Error(codes.InvalidArgument, "empty command")
	}
	return nil
}

// StartExec journals the request durably, then starts it on the agent (see
// the package comment). The same idempotency key returns the existing
// record without starting anything.
func (d *Daemon) StartExec(ctx context.Context, req *supervisorv1.StartExecRequest) (*supervisorv1.StartExecResponse, error) {
	if err := validateStart(req.Request); err != nil {
		return nil, err
	}
	sb, err := d.awake(ctx, req.Sandbox)
	if err != nil {
		return nil, err
	}
	key := req.IdempotencyKey
	if key == "" {
		key = req.Request.Id
	}
	if len(key) > 256 {
		return nil, status.Errorf(codes.InvalidArgument, "idempotency key longer than 256 bytes")
	}
	id := req.Request.Id
	if id == "" {
		id = ids.NewExecID()
	}
	rec, created, err := d.store.Accept(&execstore.Record{
		Id: id, Sandbox: sb.ID, IdempotencyKey: key, Request: req.Request,
		Generation: sb.Generation(), AcceptedUnixNano: time.Now().UnixNano(),
	})
	if err != nil {
		return nil, err
	}
	if !created {
		return &supervisorv1.StartExecResponse{Record: d.view(rec)}, nil
	}
	l, err := d.newLive(sb, rec, true)
	if err != nil {
		// Nothing was sent: the record says why.
		d.store.Update(id, func(r *execstore.Record) error { return execstore.Fail(r, codes.Internal, err.Error()) })
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	sctx, cancel := context.WithTimeout(l.ctx, d.cfg.StartTimeout)
	defer cancel()
	st, err := d.startOnAgent(sctx, sb, rec)
	switch {
	case err == nil:
		// Running is journalled with the next commit (a flush within
		// FlushInterval, or the exit): a crash before it is resolved by
		// asking the agent, like any accepted record.
		l.setStarted(st)
		d.spawn(func() { d.follow(l, reasonLinkBeforeAck) })
		return &supervisorv1.StartExecResponse{Record: l.view(), Created: true}, nil
	case errors.Is(err, errAmbiguous):
		// The agent may or may not have it: the copier asks (never resends).
		d.spawn(func() { d.follow(l, reasonLinkBeforeAck) })
		return &supervisorv1.StartExecResponse{Record: l.view(), Created: true}, nil
	}
	code := status.Code(err)
	if code == codes.Unknown {
		code = codes.Internal
	}
	l.end(func(r *execstore.Record) error { return execstore.Fail(r, code, status.Convert(err).Message()) })
	d.retire(l)
	return nil, err
}

var errAmbiguous = errors.New("the agent may or may not have started the exec")

// startOnAgent sends Start. After a broken link it resends only to the same
// agent process (which dedups by id); a different process, or no answer,
// leaves it ambiguous for the copier to resolve by asking (Get).
func (d *Daemon) startOnAgent(ctx context.Context, sb *sandbox.Sandbox, rec *execstore.Record) (*agentv1.ExecStatus, error) {
	req := proto.Clone(rec.Request).(*agentv1.StartRequest)
	req.Id = rec.Id
	inst0, known := sb.Instance()
	for {
		resp, err := sb.Client.StartOnce(ctx, req)
		if err == nil {
			return resp.GetStatus(), nil
		}
		var notSent *agentclient.NotSentError
		if errors.As(err, &notSent) {
			return nil, status.Errorf(codes.Unavailable, "sandbox %s: exec %s not started: %v", sb.ID, rec.Id, status.Convert(err).Message())
		}
		if !agentclient.IsConnectionError(err) && ctx.Err() == nil && status.Code(err) != codes.ResourceExhausted {
			return nil, err // the agent refused it
		}
		// An unreadable reply (over the size cap) says nothing about
		// whether the agent started it.
		if ctx.Err() != nil || !known {
			d.log.Warn("start not acknowledged; asking the agent", "exec", rec.Id, "sandbox", sb.ID, "err", err)
			return nil, errAmbiguous
		}
		inst, ierr := sb.CurrentInstance(ctx)
		if ierr != nil || inst != inst0 {
			d.log.Warn("start not acknowledged and the agent changed; asking it", "exec", rec.Id, "sandbox", sb.ID, "err", err)
			return nil, errAmbiguous
		}
		d.log.Debug("resending start to the same agent", "exec", rec.Id, "err", err)
	}
}

// view returns the freshest record for a journalled one.
func (d *Daemon) view(r *execstore.Record) *execstore.Record {
	d.mu.Lock()
	l := d.live[r.Id]
	d.mu.Unlock()
	if l != nil {
		return l.view()
	}
	return r
}

// lookup returns an exec's record, checking it belongs to sandbox when given.
func (d *Daemon) lookup(sandbox, id string) (*execstore.Record, *liveExec, error) {
	d.mu.Lock()
	l := d.live[id]
	d.mu.Unlock()
	var r *execstore.Record
	if l != nil {
		r = l.view()
	} else {
		var err error
		if r, err = d.store.Get(id); err != nil {
			return nil, nil, err
		}
	}
	if sandbox != "" && r.Sandbox != sandbox {
		return nil, nil, status.Errorf(codes.NotFound, "exec %s not found in sandbox %s", id, sandbox)
	}
	return r, l, nil
}

// GetExec returns an exec's record.
func (d *Daemon) GetExec(sandbox, id string) (*execstore.Record, error) {
	r, _, err := d.lookup(sandbox, id)
	return r, err
}

// WaitExec waits until the exec's record is final.
func (d *Daemon) WaitExec(ctx context.Context, sandbox, id string) (*execstore.Record, error) {
	r, l, err := d.lookup(sandbox, id)
	if err != nil || l == nil {
		return r, err
	}
	select {
	case <-l.done:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	r = l.view()
	if !execstore.IsFinal(r.State) {
		return nil, status.Errorf(codes.Unavailable, "exec %s: supervisor is shutting down", id)
	}
	return r, nil
}

// OutputChunkSize is the largest data chunk sent in one message.
const OutputChunkSize = 1 << 20

// chunkPool recycles read buffers: most output requests read a few bytes,
// and a fresh MiB per request costs more than the request.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, OutputChunkSize); return &b }}

// ExecOutput sends the stored output from the requested offsets. With
// follow it keeps sending until the exec is final and everything is sent,
// then sends a chunk with the final record.
func (d *Daemon) ExecOutput(ctx context.Context, req *supervisorv1.ExecOutputRequest, send func(*supervisorv1.ExecOutputChunk) error) error {
	r, l, err := d.lookup(req.Sandbox, req.Id)
	if err != nil {
		return err
	}
	offsets := [2]uint64{req.StdoutOffset, req.StderrOffset}
	streams := [2]agentv1.Stream{agentv1.Stream_STREAM_STDOUT, agentv1.Stream_STREAM_STDERR}
	kept := func(r *execstore.Record) [2]uint64 {
		return [2]uint64{r.GetStdout().GetKept(), r.GetStderr().GetKept()}
	}
	// An offset past what is stored is fine while the exec runs: a client
	// may have read bytes the daemon served but had not journalled before a
	// crash; they are copied again from the agent (the same bytes).
	pastEnd := func(r *execstore.Record) error {
		for i := range offsets {
			if k := kept(r)[i]; offsets[i] > k && execstore.IsFinal(r.State) {
				return status.Errorf(codes.OutOfRange, "exec %s: %s offset %d is past the end of the output (%d bytes)", req.Id, streams[i], offsets[i], k)
			}
		}
		return nil
	}
	if err := pastEnd(r); err != nil {
		return err
	}
	var stored *storedOutput // once the exec is no longer live
	defer func() {
		if stored != nil {
			stored.close()
		}
	}()
	settle := func() error {
		l = nil
		if r, err = d.store.Get(req.Id); err != nil {
			return err
		}
		stored, err = d.openStored(req.Id)
		return err
	}
	if l == nil {
		if err := settle(); err != nil {
			return err
		}
	}
	bp := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bp)
	buf := *bp
	for {
		var changed, done <-chan struct{}
		if l != nil {
			l.mu.Lock()
			changed = l.changed
			l.mu.Unlock()
			done = l.done
			r = l.view()
		}
		limits := kept(r)
		sent := false
		for i := range offsets {
			if offsets[i] >= limits[i] {
				continue
			}
			var n int
			var err error
			if l != nil {
				n, err = l.readAt(i, buf, offsets[i])
			} else {
				n, err = stored.readAt(i, buf[:min(uint64(len(buf)), limits[i]-offsets[i])], offsets[i])
			}
			if errors.Is(err, errRetired) {
				if err := settle(); err != nil {
					return err
				}
				sent = true // read again from the stored output
				break
			}
			if n > 0 {
				if err := send(&supervisorv1.ExecOutputChunk{Stream: streams[i], Offset: offsets[i], Data: buf[:n]}); err != nil {
					return err
				}
				offsets[i] += uint64(n)
				sent = true
			}
			if err != nil && err != io.EOF {
				return status.Errorf(codes.Internal, "exec %s: read %s: %v", req.Id, streams[i], err)
			}
		}
		if sent {
			continue
		}
		if l != nil {
			select {
			case <-done:
				if r = l.view(); !execstore.IsFinal(r.State) {
					// The copier stopped without an end: ask the journal.
					if err := settle(); err != nil {
						return err
					}
				}
				if k := kept(r); offsets[0] < k[0] || offsets[1] < k[1] {
					continue // output that arrived with the end
				}
			default:
			}
		}
		if !req.Follow {
			return nil
		}
		if execstore.IsFinal(r.State) {
			if err := pastEnd(r); err != nil {
				return err
			}
			return send(&supervisorv1.ExecOutputChunk{Final: r})
		}
		if l == nil {
			return status.Errorf(codes.Unavailable, "exec %s is %s but not being followed (supervisor shutting down?)", req.Id, execstore.StateName(r.State))
		}
		select {
		case <-changed:
		case <-done:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// storedOutput reads the output of an exec that is no longer live: inline
// from the journal, or from its files.
type storedOutput struct {
	inline execstore.Output
	files  [2]*os.File
}

func (d *Daemon) openStored(id string) (*storedOutput, error) {
	in, err := d.store.InlineOutput(id)
	if err != nil {
		return nil, err
	}
	s := &storedOutput{inline: in}
	for i, name := range []string{"stdout", "stderr"} {
		if in.Has[i] {
			continue
		}
		f, err := os.Open(d.outPath(id, name))
		if err != nil && !os.IsNotExist(err) {
			s.close()
			return nil, status.Errorf(codes.Internal, "exec %s: open %s: %v", id, name, err)
		}
		s.files[i] = f
	}
	return s, nil
}

func (s *storedOutput) readAt(i int, p []byte, off uint64) (int, error) {
	if s.inline.Has[i] {
		if off >= uint64(len(s.inline.Data[i])) {
			return 0, io.EOF
		}
		return copy(p, s.inline.Data[i][off:]), nil
	}
	if s.files[i] == nil {
		return 0, io.EOF
	}
	return s.files[i].ReadAt(p, int64(off))
}

func (s *storedOutput) close() {
	for _, f := range s.files {
		if f != nil {
			f.Close()
		}
	}
}

// running returns the sandbox of an exec that must not have finished.
// A sleeping sandbox is woken first.
func (d *Daemon) running(ctx context.Context, sandbox, id string) (*sandbox.Sandbox, error) {
	r, _, err := d.lookup(sandbox, id)
	if err != nil {
		return nil, err
	}
	if execstore.IsFinal(r.State) {
		return nil, status.Errorf(codes.FailedPrecondition, "exec %s has finished (%s)", id, execstore.StateName(r.State))
	}
	return d.awake(ctx, r.Sandbox)
}

// awake returns a registered sandbox, woken first if it sleeps: every call
// that reaches the agent comes through here.
func (d *Daemon) awake(ctx context.Context, id string) (*sandbox.Sandbox, error) {
	sb, err := d.reg.Get(id)
	if err != nil {
		return nil, err
	}
	if err := d.wake(ctx, id); err != nil {
		return nil, err
	}
	return sb, nil
}

// SignalExec signals an exec's process group.
func (d *Daemon) SignalExec(ctx context.Context, sandbox, id string, sig int32) error {
	sb, err := d.running(ctx, sandbox, id)
	if err != nil {
		return err
	}
	return sb.Client.Signal(ctx, id, int(sig))
}

// WriteStdin writes to an exec's stdin (never resent after a broken link).
func (d *Daemon) WriteStdin(ctx context.Context, sandbox, id string, data []byte) error {
	sb, err := d.running(ctx, sandbox, id)
	if err != nil {
		return err
	}
	return sb.Client.WriteStdin(ctx, id, data)
}

// CloseStdin closes an exec's stdin.
func (d *Daemon) CloseStdin(ctx context.Context, sandbox, id string) error {
	sb, err := d.running(ctx, sandbox, id)
	if err != nil {
		return err
	}
	return sb.Client.CloseStdin(ctx, id)
}

// ResizeExec resizes an exec's pty.
func (d *Daemon) ResizeExec(ctx context.Context, sandbox, id string, rows, cols uint32) error {
	sb, err := d.running(ctx, sandbox, id)
	if err != nil {
		return err
	}
	return sb.Client.Resize(ctx, id, rows, cols)
}

// ListExecs pages through the journal in acceptance order.
func (d *Daemon) ListExecs(req *supervisorv1.ListExecsRequest) (*supervisorv1.ListExecsResponse, error) {
	size := int(req.PageSize)
	if size <= 0 {
		size = 100
	}
	size = min(size, 1000)
	var after uint64
	if req.PageToken != "" {
		var err error
		if after, err = strconv.ParseUint(req.PageToken, 10, 64); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "bad page token %q", req.PageToken)
		}
	}
	recs, next, err := d.store.List(req.Sandbox, after, size)
	if err != nil {
		return nil, err
	}
	resp := &supervisorv1.ListExecsResponse{}
	for _, r := range recs {
		resp.Execs = append(resp.Execs, d.view(r))
	}
	if next != 0 {
		resp.NextPageToken = strconv.FormatUint(next, 10)
	}
	return resp, nil
}

// DeleteExec forgets a finished exec and its output.
func (d *Daemon) DeleteExec(sandbox, id string) error {
	if _, _, err := d.lookup(sandbox, id); err != nil {
		return err
	}
	if err := d.store.Delete(id); err != nil {
		return err
	}
	d.removeOutput(id)
	return nil
}

// listenerGrace lets the agent's own DeadlineExceeded (which says what it
// saw) arrive before the call's deadline cuts it off.
const listenerGrace = 10 * time.Second

// WaitListener passes Listener.Wait through to the sandbox's agent, on a
// connection of its own (a wait can be long), redialing after a broken link
// (waiting has no side effect).
func (d *Daemon) WaitListener(ctx context.Context, sandbox string, req *agentv1.WaitListenerRequest) (*agentv1.WaitListenerResponse, error) {
	sb, err := d.awake(ctx, sandbox)
	if err != nil {
		return nil, err
	}
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "no request")
	}
	timeout := time.Duration(req.TimeoutMs) * time.Millisecond
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(listenerGrace))
	defer cancel()
	for {
		nc, err := transport.Dial(ctx, sb.Addr)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "sandbox %s: agent %s: %v", sandbox, sb.Addr, err)
		}
		tc := ttrpc.NewClient(nc)
		r := proto.Clone(req).(*agentv1.WaitListenerRequest)
		r.TimeoutMs = max(time.Until(deadline).Milliseconds(), 1)
		resp, err := agentv1.NewListenerClient(tc).Wait(ctx, r)
		tc.Close()
		if err == nil || !agentclient.IsConnectionError(err) || ctx.Err() != nil || time.Until(deadline) <= 0 {
			return resp, err
		}
	}
}

// ReadFile passes a file read through to the sandbox's agent: the file's
// info first, then its data in chunks of at most OutputChunkSize.
func (d *Daemon) ReadFile(ctx context.Context, sandbox string, req *agentv1.ReadFileRequest, send func(*agentv1.ReadFileChunk) error) error {
	sb, err := d.awake(ctx, sandbox)
	if err != nil {
		return err
	}
	if req == nil {
		return status.Error(codes.InvalidArgument, "no request")
	}
	w := &chunkSender{send: send, off: req.Offset}
	_, _, err = sb.Client.ReadFile(ctx, req.Path, w, agentclient.ReadOptions{
		Offset: req.Offset, Limit: req.Limit,
		OnInfo: func(info *agentv1.FileInfo) { w.err = send(&agentv1.ReadFileChunk{Info: info, Offset: req.Offset}) },
	})
	if w.err != nil {
		return w.err
	}
	return err
}

// chunkSender is the io.Writer that forwards file data as chunks.
type chunkSender struct {
	send func(*agentv1.ReadFileChunk) error
	off  uint64
	err  error
}

func (c *chunkSender) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), OutputChunkSize)
		if c.err = c.send(&agentv1.ReadFileChunk{Offset: c.off, Data: p[:k]}); c.err != nil {
			return 0, c.err
		}
		c.off += uint64(k)
		p = p[k:]
	}
	return n, nil
}

// StatFile passes Stat through to the sandbox's agent.
func (d *Daemon) StatFile(ctx context.Context, sandbox, path string) (*agentv1.FileInfo, error) {
	sb, err := d.awake(ctx, sandbox)
	if err != nil {
		return nil, err
	}
	return sb.Client.StatFile(ctx, path)
}

// CallFunction passes a function call through to the sandbox's agent.
func (d *Daemon) CallFunction(ctx context.Context, sandbox string, req *agentv1.FunctionCallRequest) (*agentv1.FunctionCallResponse, error) {
	sb, err := d.awake(ctx, sandbox)
	if err != nil {
		return nil, err
	}
	if req == nil {
		return nil, status.Error(codes.InvalidArgument, "no request")
	}
	return sb.Client.CallFunction(ctx, req)
}
