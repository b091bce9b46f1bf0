package agentclient

import (
	"context"

	"github.com/containerd/ttrpc"

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
	if closedAlready(cn.tc) {
		// The link died before this call (the agent restarted and nobody
		// has used the connection since): redial rather than "send" into
		// it and leave the start ambiguous.
		c.drop(cn)
		if cn, err = c.get(ctx); err != nil {
			return nil, &NotSentError{err}
		}
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

// closedAlready reports whether a ttrpc client has shut down. It never
// reports a live client as closed; for a closed one it is right with
// probability 1-2^-8 (UserOnCloseWait's select picks at random between the
// closed client and the cancelled context).
func closedAlready(tc *ttrpc.Client) bool {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for range 8 {
		if tc.UserOnCloseWait(done) == nil {
			return true
		}
	}
	return false
}
