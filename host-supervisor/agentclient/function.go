package agentclient

import (
	"context"
	"fmt"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MaxFunctionPayload is the agent's limit on a pickled call (and result).
const MaxFunctionPayload = 3 << 20

// RemoteError is an exception raised by a Python function in the guest.
type RemoteError struct {
	Type, Message, Traceback string
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return "remote exception " + e.Type
	}
	return fmt.Sprintf("remote exception %s: %s", e.Type, e.Message)
}

// GRPCStatus lets code that only knows status codes see it as Aborted.
func (e *RemoteError) GRPCStatus() *status.Status { return status.New(codes.Aborted, e.Error()) }

// CallFunction runs a pickled (callable, args, kwargs) in the guest and
// returns the response (pickled result and captured prints). A remote
// exception is returned as *RemoteError together with the response (for its
// prints); a timeout as DeadlineExceeded, also with the response. A call is
// not idempotent, so a lost link fails it (Unavailable) without a retry.
func (c *Client) CallFunction(ctx context.Context, req *agentv1.FunctionCallRequest) (*agentv1.FunctionCallResponse, error) {
	if len(req.Payload) > MaxFunctionPayload {
		return nil, status.Errorf(codes.ResourceExhausted,
			"function payload is %d bytes, over the %d MiB limit: write large data to a file in the sandbox and pass its path instead",
			len(req.Payload), MaxFunctionPayload>>20)
	}
	cn, err := c.get(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := agentv1.NewFunctionClient(cn.tc).Call(ctx, req)
	if IsConnectionError(err) {
		c.drop(cn)
		return nil, status.Errorf(codes.Unavailable, "function call: connection to agent %s lost (%v); it may or may not have run", c.addr, err)
	}
	if err != nil {
		return nil, err
	}
	if resp.TimedOut {
		return resp, status.Errorf(codes.DeadlineExceeded, "function call timed out after %dms", req.TimeoutMs)
	}
	if ex := resp.Exception; ex != nil {
		return resp, &RemoteError{Type: ex.Type, Message: ex.Message, Traceback: ex.Traceback}
	}
	return resp, nil
}
