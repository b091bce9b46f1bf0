package execstore

import (
	"strings"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// AgentStatus renders a record in the agent's status shape, which the exec
// commands and the REPL print. Accepted and running records show as
// running; lost and failed ones have no agent state (EXEC_STATE_UNSPECIFIED):
// callers report those as errors.
func AgentStatus(r *Record) *agentv1.ExecStatus {
	st := &agentv1.ExecStatus{
		Id: r.Id, Pid: r.Pid, ExitCode: r.ExitCode, Signal: r.Signal,
		StartedUnixNano: r.StartedUnixNano, EndedUnixNano: r.EndedUnixNano,
		Stdout:  &agentv1.StreamInfo{Total: r.GetStdout().GetTotal(), Kept: r.GetStdout().GetKept(), Truncated: r.GetStdout().GetTruncated()},
		Stderr:  &agentv1.StreamInfo{Total: r.GetStderr().GetTotal(), Kept: r.GetStderr().GetKept(), Truncated: r.GetStderr().GetTruncated()},
		Command: r.GetRequest().GetCommand(), Tty: r.GetRequest().GetTty(),
	}
	if st.StartedUnixNano == 0 {
		st.StartedUnixNano = r.AcceptedUnixNano
	}
	if st.Command == "" {
		st.Command = strings.Join(r.GetRequest().GetArgv(), " ")
	}
	switch r.State {
	case Accepted, Running:
		st.State = agentv1.ExecState_EXEC_STATE_RUNNING
	case Exited:
		st.State = agentv1.ExecState_EXEC_STATE_EXITED
	case TimedOut:
		st.State, st.TimedOut = agentv1.ExecState_EXEC_STATE_TIMED_OUT, true
	}
	return st
}
