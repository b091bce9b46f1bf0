package agentclient

import (
	"context"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// StartOnce sends Start on the current connection (dialing when there is
// none) and never resends it: after a connection error the caller decides,
// knowing whether the agent it talks to is still the same process, whether
// a resend is a harmless duplicate (the agent dedups by id) or could run the
// command a second time on a restarted agent.
func (c *Client) StartOnce(ctx context.Context, req *agentv1.StartRequest) (*agentv1.StartResponse, error) {
	cn, err := c.get(ctx)
	if err != nil {
		return nil, &NotSentError{err}
	}
	resp, err := cn.exec.Start(ctx, req)
	if IsConnectionError(err) {
		c.drop(cn)
	}
	return resp, err
}

// NotSentError is a StartOnce that failed before anything was sent (no
// connection): the agent cannot have started the exec.
type NotSentError struct{ Err error }

func (e *NotSentError) Error() string { return e.Err.Error() }
func (e *NotSentError) Unwrap() error { return e.Err }
