package service

import (
	"context"
	"errors"
	"io"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/guest-agent/execengine"
	"github.com/sailbox/sailbox/guest-agent/spool"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// OutputChunkSize is the largest data chunk in one Output message: well
// under ttrpc's 4 MiB message cap.
const OutputChunkSize = 1 << 20

// Exec serves agentv1.Exec over an execengine.Manager.
type Exec struct {
	M *execengine.Manager
}

var _ agentv1.ExecService = (*Exec)(nil)

func (s *Exec) Start(ctx context.Context, req *agentv1.StartRequest) (*agentv1.StartResponse, error) {
	e, created, err := s.start(req)
	if err != nil {
		return nil, err
	}
	return &agentv1.StartResponse{Status: ExecStatusProto(e.Status()), Created: created}, nil
}

func (s *Exec) start(req *agentv1.StartRequest) (*execengine.Exec, bool, error) {
	if req.Rows > 0xffff || req.Cols > 0xffff {
		return nil, false, status.Errorf(codes.InvalidArgument, "pty size %dx%d out of range", req.Cols, req.Rows)
	}
	spec := execengine.Spec{
		ID: req.Id, Command: req.Command, Argv: req.Argv, Cwd: req.Cwd, Env: req.Env,
		Timeout:   time.Duration(req.TimeoutMs) * time.Millisecond,
		KillGrace: time.Duration(req.KillGraceMs) * time.Millisecond,
		Stdin:     req.Stdin, TTY: req.Tty, Rows: uint16(req.Rows), Cols: uint16(req.Cols),
		OutputCap: req.OutputCap,
	}
	return s.M.Start(spec)
}

func (s *Exec) Output(ctx context.Context, req *agentv1.OutputRequest, srv agentv1.Exec_OutputServer) error {
	return s.output(ctx, req, &ttrpcSink{srv: srv})
}

// outputSink is where output goes: a ttrpc stream (Output) or a raw data
// connection (see data.go).
type outputSink interface {
	// data sends up to n bytes of sp from off and returns how many it sent.
	data(stream agentv1.Stream, sp *spool.Spool, off uint64, n uint64) (uint64, error)
	final(st *agentv1.ExecStatus) error
}

// output serves one OutputRequest into sink.
func (s *Exec) output(ctx context.Context, req *agentv1.OutputRequest, sink outputSink) error {
	var (
		e   *execengine.Exec
		err error
	)
	if req.Start != nil {
		// Without a host-chosen id a retried request would run the command twice.
		if req.Start.Id == "" || (req.Id != "" && req.Id != req.Start.Id) {
			return status.Errorf(codes.InvalidArgument, "output with start: start.id must be given and equal id (got %q and %q)", req.Start.Id, req.Id)
		}
		e, _, err = s.start(req.Start)
	} else {
		e, err = s.M.Get(req.Id)
	}
	// Releases after the start: they then overlap the new command's run.
	for _, id := range req.Release {
		if id != req.Id && (req.Start == nil || id != req.Start.Id) {
			s.M.Release(id) // best effort by contract
		}
	}
	if err != nil {
		return err
	}
	spools := [2]*spool.Spool{e.Stdout(), e.Stderr()}
	streams := [2]agentv1.Stream{agentv1.Stream_STREAM_STDOUT, agentv1.Stream_STREAM_STDERR}
	offsets := [2]uint64{req.StdoutOffset, req.StderrOffset}
	for i, sp := range spools {
		if kept := sp.Info().Kept; offsets[i] > kept {
			return status.Errorf(codes.OutOfRange, "exec %s: %s offset %d is past the end of the output (%d bytes)",
				e.ID(), streamName(streams[i]), offsets[i], kept)
		}
	}
	for {
		// Take the change signals before reading, so a write between the
		// read and the wait still wakes us.
		changed := [2]<-chan struct{}{spools[0].Changed(), spools[1].Changed()}
		finalOut, finalErr, finished := e.FinalKept()
		limits := [2]uint64{^uint64(0), ^uint64(0)}
		if finished && req.Follow {
			limits = [2]uint64{finalOut, finalErr}
		}
		sent := false
		for i, sp := range spools {
			if offsets[i] >= limits[i] {
				continue
			}
			n, err := sink.data(streams[i], sp, offsets[i], min(OutputChunkSize, limits[i]-offsets[i]))
			if n > 0 {
				offsets[i] += n
				sent = true
			}
			if err != nil {
				if errors.Is(err, errSinkBroken) {
					return err
				}
				return status.Errorf(codes.Internal, "exec %s: read %s: %v", e.ID(), streamName(streams[i]), err)
			}
		}
		if sent {
			continue
		}
		if !req.Follow {
			return nil
		}
		if finished {
			return sink.final(ExecStatusProto(e.Status()))
		}
		select {
		case <-changed[0]:
		case <-changed[1]:
		case <-e.Done():
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// errSinkBroken marks a failure to deliver (the client went away), as
// opposed to a failure to read the output.
var errSinkBroken = errors.New("output sink broken")

type sinkError struct{ err error }

func (e *sinkError) Error() string        { return e.err.Error() }
func (e *sinkError) Is(target error) bool { return target == errSinkBroken }
func (e *sinkError) Unwrap() error        { return e.err }

// ttrpcSink sends output as OutputChunk messages of a ttrpc stream.
type ttrpcSink struct {
	srv agentv1.Exec_OutputServer
	buf []byte
}

func (t *ttrpcSink) data(stream agentv1.Stream, sp *spool.Spool, off, n uint64) (uint64, error) {
	if t.buf == nil {
		t.buf = make([]byte, OutputChunkSize)
	}
	got, err := sp.ReadAt(t.buf[:min(uint64(len(t.buf)), n)], off)
	if got > 0 {
		if err := t.srv.Send(&agentv1.OutputChunk{Stream: stream, Offset: off, Data: t.buf[:got]}); err != nil {
			return 0, &sinkError{err}
		}
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return uint64(got), err
}

func (t *ttrpcSink) final(st *agentv1.ExecStatus) error {
	return t.srv.Send(&agentv1.OutputChunk{Final: st})
}

func (s *Exec) Wait(ctx context.Context, req *agentv1.ExecRef) (*agentv1.ExecStatus, error) {
	e, err := s.M.Get(req.Id)
	if err != nil {
		return nil, err
	}
	st, err := e.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return ExecStatusProto(st), nil
}

func (s *Exec) Get(ctx context.Context, req *agentv1.ExecRef) (*agentv1.ExecStatus, error) {
	e, err := s.M.Get(req.Id)
	if err != nil {
		return nil, err
	}
	return ExecStatusProto(e.Status()), nil
}

func (s *Exec) Signal(ctx context.Context, req *agentv1.SignalRequest) (*agentv1.SignalResponse, error) {
	if req.Signal <= 0 || req.Signal > 64 {
		return nil, status.Errorf(codes.InvalidArgument, "signal %d out of range", req.Signal)
	}
	e, err := s.M.Get(req.Id)
	if err != nil {
		return nil, err
	}
	if err := e.Signal(syscall.Signal(req.Signal)); err != nil {
		return nil, err
	}
	return &agentv1.SignalResponse{}, nil
}

func (s *Exec) WriteStdin(ctx context.Context, req *agentv1.WriteStdinRequest) (*agentv1.WriteStdinResponse, error) {
	e, err := s.M.Get(req.Id)
	if err != nil {
		return nil, err
	}
	n, err := e.WriteStdin(ctx, req.Data)
	if err != nil {
		return nil, err
	}
	return &agentv1.WriteStdinResponse{Written: uint64(n)}, nil
}

func (s *Exec) CloseStdin(ctx context.Context, req *agentv1.ExecRef) (*agentv1.CloseStdinResponse, error) {
	e, err := s.M.Get(req.Id)
	if err != nil {
		return nil, err
	}
	if err := e.CloseStdin(); err != nil {
		return nil, err
	}
	return &agentv1.CloseStdinResponse{}, nil
}

func (s *Exec) Resize(ctx context.Context, req *agentv1.ResizeRequest) (*agentv1.ResizeResponse, error) {
	if req.Rows > 0xffff || req.Cols > 0xffff {
		return nil, status.Errorf(codes.InvalidArgument, "pty size %dx%d out of range", req.Cols, req.Rows)
	}
	e, err := s.M.Get(req.Id)
	if err != nil {
		return nil, err
	}
	if err := e.Resize(uint16(req.Rows), uint16(req.Cols)); err != nil {
		return nil, err
	}
	return &agentv1.ResizeResponse{}, nil
}

func (s *Exec) List(ctx context.Context, req *agentv1.ListRequest) (*agentv1.ListResponse, error) {
	var resp agentv1.ListResponse
	for _, e := range s.M.List() {
		resp.Execs = append(resp.Execs, ExecStatusProto(e.Status()))
	}
	return &resp, nil
}

func (s *Exec) Release(ctx context.Context, req *agentv1.ExecRef) (*agentv1.ReleaseResponse, error) {
	if err := s.M.Release(req.Id); err != nil {
		return nil, err
	}
	return &agentv1.ReleaseResponse{}, nil
}

// ExecStatusProto converts an execengine status to its protocol message.
func ExecStatusProto(st execengine.Status) *agentv1.ExecStatus {
	p := &agentv1.ExecStatus{
		Id: st.ID, Pid: int32(st.Pid), ExitCode: int32(st.ExitCode), Signal: int32(st.Signal),
		TimedOut: st.TimedOut, StartedUnixNano: st.Started.UnixNano(),
		Stdout:  &agentv1.StreamInfo{Total: st.Stdout.Total, Kept: st.Stdout.Kept, Truncated: st.Stdout.Truncated},
		Stderr:  &agentv1.StreamInfo{Total: st.Stderr.Total, Kept: st.Stderr.Kept, Truncated: st.Stderr.Truncated},
		Command: st.Command, Tty: st.TTY,
	}
	switch st.State {
	case execengine.StateRunning:
		p.State = agentv1.ExecState_EXEC_STATE_RUNNING
	case execengine.StateExited:
		p.State = agentv1.ExecState_EXEC_STATE_EXITED
	case execengine.StateTimedOut:
		p.State = agentv1.ExecState_EXEC_STATE_TIMED_OUT
	}
	if !st.Ended.IsZero() {
		p.EndedUnixNano = st.Ended.UnixNano()
	}
	return p
}

func streamName(s agentv1.Stream) string {
	if s == agentv1.Stream_STREAM_STDERR {
		return "stderr"
	}
	return "stdout"
}
