package repl

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Agent is a Backend that talks to a guest agent directly. Most calls go
// through agentclient (which redials dropped links); Listener calls, which
// agentclient does not have, use a second connection with the same rule.
type Agent struct {
	*agentclient.Client
	addr string

	mu sync.Mutex
	tc *ttrpc.Client
}

var _ Backend = (*Agent)(nil)

// DialAgent returns a Backend for the agent at addr (unix://, vsock://,
// hvsock://). It dials lazily; a malformed address fails here.
func DialAgent(addr string) (*Agent, error) {
	cl, err := agentclient.New(addr, agentclient.Options{})
	if err != nil {
		return nil, err
	}
	return &Agent{Client: cl, addr: addr}, nil
}

// Close closes both connections.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.tc != nil {
		a.tc.Close()
		a.tc = nil
	}
	a.mu.Unlock()
	return a.Client.Close()
}

// call runs f on the side connection, redialing after a broken link (every
// snapshot resets vsock connections) until ctx ends. Only calls that are
// safe to repeat go through it (Listener.Wait has no side effect).
func (a *Agent) call(ctx context.Context, f func(*ttrpc.Client) error) error {
	backoff := 20 * time.Millisecond
	for {
		a.mu.Lock()
		if a.tc == nil {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			nc, err := transport.Dial(dctx, a.addr)
			cancel()
			if err != nil {
				a.mu.Unlock()
				return status.Errorf(codes.Unavailable, "agent %s: %v", a.addr, err)
			}
			a.tc = ttrpc.NewClient(nc)
		}
		tc := a.tc
		a.mu.Unlock()
		err := f(tc)
		if err == nil || !agentclient.IsConnectionError(err) {
			return err
		}
		a.mu.Lock()
		if a.tc == tc {
			a.tc.Close()
			a.tc = nil
		}
		a.mu.Unlock()
		if ctx.Err() != nil {
			return fmt.Errorf("agent %s: %w (last error: %v)", a.addr, status.FromContextError(ctx.Err()).Err(), err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// WaitListener waits until a port in the guest is ready.
func (a *Agent) WaitListener(ctx context.Context, req *agentv1.WaitListenerRequest) (resp *agentv1.WaitListenerResponse, err error) {
	deadline := time.Now().Add(time.Duration(req.TimeoutMs) * time.Millisecond)
	err = a.call(ctx, func(tc *ttrpc.Client) error {
		// After a redial, wait only for the time that is left.
		r := &agentv1.WaitListenerRequest{Port: req.Port, Protocol: req.Protocol, TimeoutMs: max(time.Until(deadline).Milliseconds(), 1)}
		resp, err = agentv1.NewListenerClient(tc).Wait(ctx, r)
		return err
	})
	return resp, err
}
