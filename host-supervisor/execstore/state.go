package execstore

import (
	"time"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Record is one journalled exec (the protocol message is also the storage
// format, so what is stored is what is served).
type Record = supervisorv1.ExecRecord

// State is an exec record's state.
type State = supervisorv1.ExecState

// The states.
const (
	Accepted = supervisorv1.ExecState_EXEC_STATE_ACCEPTED
	Running  = supervisorv1.ExecState_EXEC_STATE_RUNNING
	Exited   = supervisorv1.ExecState_EXEC_STATE_EXITED
	Failed   = supervisorv1.ExecState_EXEC_STATE_FAILED
	TimedOut = supervisorv1.ExecState_EXEC_STATE_TIMED_OUT
	Lost     = supervisorv1.ExecState_EXEC_STATE_LOST
)

// IsFinal reports whether s is a final state.
func IsFinal(s State) bool {
	return s == Exited || s == Failed || s == TimedOut || s == Lost
}

// StateName is the lower-case name of s ("timed_out").
func StateName(s State) string {
	switch s {
	case Accepted:
		return "accepted"
	case Running:
		return "running"
	case Exited:
		return "exited"
	case Failed:
		return "failed"
	case TimedOut:
		return "timed_out"
	case Lost:
		return "lost"
	}
	return "unknown"
}

// Progress is how far an exec's output has been copied: offsets in the
// agent's streams and bytes stored by the supervisor.
type Progress struct {
	StdoutOffset, StderrOffset uint64
	StdoutKept, StderrKept     uint64
	StdoutCut, StderrCut       bool // the supervisor's cap dropped bytes
}

// Started is what the agent said when it acknowledged a start.
type Started struct {
	Pid         int32
	StartedNano int64
}

// execState is one state of the machine (the shape of containerd's runc
// shim process/exec_state.go): each state implements every event and
// rejects the ones that are illegal from it.
type execState interface {
	run(r *Record, s Started) error
	progress(r *Record, p Progress) error
	exit(r *Record, st *agentv1.ExecStatus, p Progress) error
	fail(r *Record, code codes.Code, reason string) error
	lose(r *Record, reason string) error
}

func stateOf(r *Record) execState {
	switch r.State {
	case Accepted:
		return acceptedState{}
	case Running:
		return runningState{}
	}
	return finalState{}
}

// Run moves an accepted exec to running.
func Run(r *Record, s Started) error { return stateOf(r).run(r, s) }

// Advance records output progress of a running exec.
func Advance(r *Record, p Progress) error { return stateOf(r).progress(r, p) }

// Exit records a running exec's final status from the agent (exited or
// timed_out) with the final progress.
func Exit(r *Record, st *agentv1.ExecStatus, p Progress) error { return stateOf(r).exit(r, st, p) }

// Fail records that the agent refused the exec (it never ran).
func Fail(r *Record, code codes.Code, reason string) error { return stateOf(r).fail(r, code, reason) }

// Lose records that the exec's outcome cannot be known.
func Lose(r *Record, reason string) error { return stateOf(r).lose(r, reason) }

func illegal(r *Record, event string) error {
	return status.Errorf(codes.FailedPrecondition, "exec %s: cannot %s: it is %s", r.Id, event, StateName(r.State))
}

// maxReason bounds a stored reason: it may quote an untrusted agent.
const maxReason = 1024

// setReason records why an exec ended without an exit status.
func setReason(r *Record, reason string) {
	if len(reason) > maxReason {
		reason = reason[:maxReason] + "…"
	}
	r.Reason = reason
	if r.EndedUnixNano == 0 {
		r.EndedUnixNano = time.Now().UnixNano()
	}
}

// unfinished holds the moves shared by accepted and running: either can
// fail (the agent refused it) or be lost.
type unfinished struct{}

func (unfinished) fail(r *Record, code codes.Code, reason string) error {
	r.State = Failed
	r.ErrorCode = int32(code)
	setReason(r, reason)
	return nil
}
func (unfinished) lose(r *Record, reason string) error {
	r.State = Lost
	setReason(r, reason)
	return nil
}

type acceptedState struct{ unfinished }

func (acceptedState) run(r *Record, s Started) error {
	r.State = Running
	r.Pid = s.Pid
	r.StartedUnixNano = s.StartedNano
	return nil
}
func (acceptedState) progress(r *Record, p Progress) error { return illegal(r, "record output") }
func (acceptedState) exit(r *Record, st *agentv1.ExecStatus, p Progress) error {
	return illegal(r, "exit before it runs")
}

type runningState struct{ unfinished }

func (runningState) run(r *Record, s Started) error { return illegal(r, "start") }
func (runningState) progress(r *Record, p Progress) error {
	if p.StdoutOffset < r.StdoutOffset || p.StderrOffset < r.StderrOffset ||
		p.StdoutKept < r.GetStdout().GetKept() || p.StderrKept < r.GetStderr().GetKept() {
		return status.Errorf(codes.Internal, "exec %s: output progress would go backwards (%+v)", r.Id, p)
	}
	r.StdoutOffset, r.StderrOffset = p.StdoutOffset, p.StderrOffset
	if r.Stdout == nil {
		r.Stdout = &supervisorv1.StreamInfo{}
	}
	if r.Stderr == nil {
		r.Stderr = &supervisorv1.StreamInfo{}
	}
	r.Stdout.Kept, r.Stderr.Kept = p.StdoutKept, p.StderrKept
	r.Stdout.Truncated = r.Stdout.Truncated || p.StdoutCut
	r.Stderr.Truncated = r.Stderr.Truncated || p.StderrCut
	r.Stdout.Total = max(r.Stdout.Total, p.StdoutOffset)
	r.Stderr.Total = max(r.Stderr.Total, p.StderrOffset)
	return nil
}
func (s runningState) exit(r *Record, st *agentv1.ExecStatus, p Progress) error {
	switch st.GetState() {
	case agentv1.ExecState_EXEC_STATE_EXITED:
		r.State = Exited
	case agentv1.ExecState_EXEC_STATE_TIMED_OUT:
		r.State = TimedOut
	default:
		return status.Errorf(codes.Internal, "exec %s: agent reported final state %v", r.Id, st.GetState())
	}
	if err := s.progress(r, p); err != nil {
		r.State = Running
		return err
	}
	r.ExitCode, r.Signal = st.ExitCode, st.Signal
	r.EndedUnixNano = st.EndedUnixNano
	if r.Pid == 0 {
		r.Pid = st.Pid
	}
	if r.StartedUnixNano == 0 {
		r.StartedUnixNano = st.StartedUnixNano
	}
	r.Stdout.Total = max(r.Stdout.Total, st.GetStdout().GetTotal())
	r.Stderr.Total = max(r.Stderr.Total, st.GetStderr().GetTotal())
	r.Stdout.Truncated = r.Stdout.Truncated || st.GetStdout().GetTruncated()
	r.Stderr.Truncated = r.Stderr.Truncated || st.GetStderr().GetTruncated()
	return nil
}

// finalState is exited, failed, timed_out or lost: nothing moves it.
type finalState struct{}

func (finalState) run(r *Record, s Started) error       { return illegal(r, "start") }
func (finalState) progress(r *Record, p Progress) error { return illegal(r, "record output") }
func (finalState) exit(r *Record, st *agentv1.ExecStatus, p Progress) error {
	return illegal(r, "exit again")
}
func (finalState) fail(r *Record, code codes.Code, reason string) error { return illegal(r, "fail") }
func (finalState) lose(r *Record, reason string) error                  { return illegal(r, "lose") }
