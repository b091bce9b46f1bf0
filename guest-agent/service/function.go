package service

import (
	"context"
	"time"

	"github.com/sailbox/sailbox/guest-agent/pyfunc"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// Function serves agentv1.Function over a pyfunc.Runner.
type Function struct {
	R *pyfunc.Runner
}

var _ agentv1.FunctionService = (*Function)(nil)

func (s *Function) Call(ctx context.Context, req *agentv1.FunctionCallRequest) (*agentv1.FunctionCallResponse, error) {
	res, err := s.R.Run(ctx, pyfunc.Call{
		Payload: req.Payload, Timeout: time.Duration(req.TimeoutMs) * time.Millisecond, Cwd: req.Cwd, Env: req.Env,
	})
	if err != nil {
		return nil, err
	}
	out := &agentv1.FunctionCallResponse{
		Result: res.Value, Stdout: res.Stdout, Stderr: res.Stderr,
		StdoutDropped: res.StdoutDropped, StderrDropped: res.StderrDropped,
		TimedOut: res.TimedOut, DurationNs: res.Duration.Nanoseconds(),
	}
	if ex := res.Exception; ex != nil {
		out.Exception = &agentv1.RemoteException{Type: ex.Type, Message: ex.Message, Traceback: ex.Traceback}
	}
	return out, nil
}
