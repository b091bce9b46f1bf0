package cli

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/execstore"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// supervisorReconnect is how long a call keeps redialing a supervisor that
// went away (a restarting daemon comes back with the same journal).
const supervisorReconnect = 60 * time.Second

// supervisorClient is a reconnecting client of the daemon's control API.
type supervisorClient struct {
	addr string

	mu  sync.Mutex
	tc  *ttrpc.Client
	api supervisorv1.SupervisorClient
}

func newSupervisorClient(addr string) (*supervisorClient, error) {
	a, err := transport.Parse(addr)
	if err != nil {
		return nil, invalid("--supervisor: %v", err)
	}
	if a.Scheme != transport.SchemeUnix {
		return nil, invalid("--supervisor %s: want unix:///path", addr)
	}
	return &supervisorClient{addr: addr}, nil
}

func (c *supervisorClient) get(ctx context.Context) (supervisorv1.SupervisorClient, *ttrpc.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tc != nil {
		return c.api, c.tc, nil
	}
	dctx, cancel := context.WithTimeout(ctx, supervisorReconnect)
	defer cancel()
	nc, err := transport.Dial(dctx, c.addr)
	if err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "supervisor %s: %v", c.addr, err)
	}
	c.tc = ttrpc.NewClient(nc)
	c.api = supervisorv1.NewSupervisorClient(c.tc)
	return c.api, c.tc, nil
}

func (c *supervisorClient) drop(tc *ttrpc.Client) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tc == tc {
		c.tc.Close()
		c.tc = nil
	}
}

// call runs f, redialing after a broken link for up to supervisorReconnect.
// Only idempotent calls go through here (StartExec is, by its key).
func (c *supervisorClient) call(ctx context.Context, f func(supervisorv1.SupervisorClient) error) error {
	deadline := time.Now().Add(supervisorReconnect)
	backoff := 20 * time.Millisecond
	for {
		api, tc, err := c.get(ctx)
		if err != nil {
			return err
		}
		err = f(api)
		if err == nil || !agentclient.IsConnectionError(err) || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		c.drop(tc)
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (c *supervisorClient) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tc != nil {
		c.tc.Close()
		c.tc = nil
	}
	return nil
}

// supervisorExecer runs execs in one sandbox through the daemon: durable,
// and answerable after the daemon restarts.
type supervisorExecer struct {
	c       *supervisorClient
	sandbox string
}

var _ Execer = (*supervisorExecer)(nil)

// recordStatus maps a journal record to the agent's status shape the exec
// commands print; lost and failed records are errors.
func recordStatus(r *supervisorv1.ExecRecord) (*agentv1.ExecStatus, error) {
	switch r.State {
	case supervisorv1.ExecState_EXEC_STATE_LOST:
		return nil, status.Errorf(codes.Aborted, "exec %s lost: %s", r.Id, r.Reason)
	case supervisorv1.ExecState_EXEC_STATE_FAILED:
		code := codes.Code(r.ErrorCode)
		if code == codes.OK {
			code = codes.Unknown
		}
		return nil, status.Errorf(code, "%s", r.Reason)
	}
	return execstore.AgentStatus(r), nil
}

func (e *supervisorExecer) Start(ctx context.Context, req *agentv1.StartRequest) (*agentv1.StartResponse, error) {
	var resp *supervisorv1.StartExecResponse
	err := e.c.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		resp, err = api.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: e.sandbox, Request: req})
		return err
	})
	if err != nil {
		return nil, err
	}
	st, err := recordStatus(resp.Record)
	if err != nil {
		return nil, err
	}
	return &agentv1.StartResponse{Status: st, Created: resp.Created}, nil
}

// CopyOutput streams the stored output, resuming at the offsets written so
// far when the link to the daemon breaks (e.g. it restarts).
func (e *supervisorExecer) CopyOutput(ctx context.Context, id string, off agentclient.Offsets, follow bool, stdout, stderr io.Writer) (*agentv1.ExecStatus, agentclient.Offsets, error) {
	var final *supervisorv1.ExecRecord
	err := e.c.call(ctx, func(api supervisorv1.SupervisorClient) error {
		stream, err := api.ExecOutput(ctx, &supervisorv1.ExecOutputRequest{
			Sandbox: e.sandbox, Id: id, StdoutOffset: off.Stdout, StderrOffset: off.Stderr, Follow: follow,
		})
		if err != nil {
			return err
		}
		last, err := agentclient.DrainOutput(id, stream.Recv, func(c *supervisorv1.ExecOutputChunk) bool { return c.Final != nil }, follow, &off, stdout, stderr)
		final = last.GetFinal()
		return err // a local write error is no connection error: call does not redial
	})
	if lw, ok := err.(*agentclient.LocalWriteError); ok {
		err = lw.Err
	}
	if err != nil || final == nil {
		return nil, off, err
	}
	st, err := recordStatus(final)
	return st, off, err
}

func (e *supervisorExecer) Wait(ctx context.Context, id string) (*agentv1.ExecStatus, error) {
	var r *supervisorv1.ExecRecord
	err := e.c.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		r, err = api.WaitExec(ctx, &supervisorv1.ExecRef{Sandbox: e.sandbox, Id: id})
		return err
	})
	if err != nil {
		return nil, err
	}
	return recordStatus(r)
}

func (e *supervisorExecer) Get(ctx context.Context, id string) (*agentv1.ExecStatus, error) {
	var r *supervisorv1.ExecRecord
	err := e.c.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		r, err = api.GetExec(ctx, &supervisorv1.ExecRef{Sandbox: e.sandbox, Id: id})
		return err
	})
	if err != nil {
		return nil, err
	}
	return recordStatus(r)
}

func (e *supervisorExecer) Signal(ctx context.Context, id string, sig int) error {
	return e.c.call(ctx, func(api supervisorv1.SupervisorClient) error {
		_, err := api.SignalExec(ctx, &supervisorv1.SignalExecRequest{Sandbox: e.sandbox, Id: id, Signal: int32(sig)})
		return err
	})
}

// WriteStdin is never resent after a broken link (it could write twice).
func (e *supervisorExecer) WriteStdin(ctx context.Context, id string, data []byte) error {
	api, tc, err := e.c.get(ctx)
	if err != nil {
		return err
	}
	_, err = api.WriteStdin(ctx, &supervisorv1.WriteStdinRequest{Sandbox: e.sandbox, Id: id, Data: data})
	if agentclient.IsConnectionError(err) {
		e.c.drop(tc)
	}
	return err
}

func (e *supervisorExecer) CloseStdin(ctx context.Context, id string) error {
	return e.c.call(ctx, func(api supervisorv1.SupervisorClient) error {
		_, err := api.CloseStdin(ctx, &supervisorv1.ExecRef{Sandbox: e.sandbox, Id: id})
		return err
	})
}

func (e *supervisorExecer) Resize(ctx context.Context, id string, rows, cols uint32) error {
	return e.c.call(ctx, func(api supervisorv1.SupervisorClient) error {
		_, err := api.ResizeExec(ctx, &supervisorv1.ResizeExecRequest{Sandbox: e.sandbox, Id: id, Rows: rows, Cols: cols})
		return err
	})
}

// List lists the sandbox's journalled execs that have a status to show
// (lost and failed ones are listed by `sandbox execs`).
func (e *supervisorExecer) List(ctx context.Context) ([]*agentv1.ExecStatus, error) {
	recs, err := e.c.listExecs(ctx, e.sandbox)
	if err != nil {
		return nil, err
	}
	var out []*agentv1.ExecStatus
	for _, r := range recs {
		if st, err := recordStatus(r); err == nil {
			out = append(out, st)
		}
	}
	return out, nil
}

func (c *supervisorClient) listExecs(ctx context.Context, sandbox string) ([]*supervisorv1.ExecRecord, error) {
	var out []*supervisorv1.ExecRecord
	token := ""
	for {
		var resp *supervisorv1.ListExecsResponse
		err := c.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
			resp, err = api.ListExecs(ctx, &supervisorv1.ListExecsRequest{Sandbox: sandbox, PageSize: 1000, PageToken: token})
			return err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, resp.Execs...)
		if token = resp.NextPageToken; token == "" {
			return out, nil
		}
	}
}

// Release does nothing: the daemon releases the agent's copy itself once
// the result is durable, and keeps the record for `wait` until retention
// deletes it.
func (e *supervisorExecer) Release(ctx context.Context, id string) error { return nil }

func (e *supervisorExecer) Close() error { return e.c.Close() }

// agentAddr asks the daemon for a sandbox's agent address.
func (c *supervisorClient) agentAddr(ctx context.Context, sandbox string) (string, error) {
	var resp *supervisorv1.ListSandboxesResponse
	err := c.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		resp, err = api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{})
		return err
	})
	if err != nil {
		return "", err
	}
	for _, sb := range resp.Sandboxes {
		if sb.Id == sandbox {
			return sb.Agent, nil
		}
	}
	return "", status.Errorf(codes.NotFound, "sandbox %s not found", sandbox)
}
