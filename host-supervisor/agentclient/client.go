// Package agentclient is the host side of the agent protocol: a client that
// dials an agent by address, redials after the connection drops (every
// snapshot resets vsock connections: that is the normal path), and copies an
// exec's output by offset so a reconnect never loses or repeats a byte.
package agentclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Client talks to one agent. It is safe for concurrent use; calls share one
// connection, which is re-established on demand.
type Client struct {
	addr        string
	opts        transport.DialOptions
	dialTimeout time.Duration
	log         *slog.Logger

	mu   sync.Mutex
	conn *conn

	relMu    sync.Mutex
	releases []string // finished execs Run will release (see run.go)

	dataMu   sync.Mutex
	idleData []*dataConn // see data.go
	noData   bool        // the agent has no data connections
	closed   bool
}

type conn struct {
	tc    *ttrpc.Client
	exec  agentv1.ExecClient
	agent agentv1.AgentService
}

// Options configure a Client.
type Options struct {
	Dial transport.DialOptions
	// DialTimeout bounds one (re)connection, retries included (default 10s).
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// New returns a client for addr; it dials lazily. A malformed address fails here.
func New(addr string, o Options) (*Client, error) {
	if _, err := transport.Parse(addr); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	return &Client{addr: addr, opts: o.Dial, dialTimeout: o.DialTimeout, log: o.Logger}, nil
}

// Addr returns the agent address.
func (c *Client) Addr() string { return c.addr }

// get returns the live connection, dialing when there is none.
func (c *Client) get(ctx context.Context) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		return c.conn, nil
	}
	dctx, cancel := context.WithTimeout(ctx, c.dialTimeout)
	defer cancel()
	nc, err := transport.DialWith(dctx, c.addr, c.opts)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "agent %s: %v", c.addr, err)
	}
	tc := ttrpc.NewClient(nc)
	c.conn = &conn{tc: tc, exec: agentv1.NewExecClient(tc), agent: agentv1.NewAgentClient(tc)}
	return c.conn, nil
}

// drop forgets a broken connection (only if it is still the current one).
func (c *Client) drop(cn *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == cn {
		c.conn = nil
		cn.tc.Close()
	}
}

// Close releases what Run left to release, then closes the connection.
func (c *Client) Close() error {
	if c.queuedReleases() > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), closeReleaseTimeout)
		c.flushReleases(ctx)
		cancel()
	}
	c.closeData()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.tc.Close()
		c.conn = nil
	}
	return nil
}

// IsConnectionError reports whether err means the link failed (retry on a
// new connection), as opposed to an answer from the agent.
func IsConnectionError(err error) bool {
	var lw *LocalWriteError
	if err == nil || errors.As(err, &lw) {
		return false
	}
	if errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, ttrpc.ErrStreamFull) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	if s, ok := status.FromError(err); ok && s.Code() == codes.Unavailable {
		return true
	}
	return false
}

// call runs f on a connection, redialing and retrying after each broken link
// until ctx ends. A failed dial is not retried here: the dialer already
// retried what can be retried. Only idempotent calls go through call: Start is idempotent
// on its exec id, the rest are reads or converge.
func (c *Client) call(ctx context.Context, f func(*conn) error) error {
	backoff := 20 * time.Millisecond
	for {
		cn, err := c.get(ctx)
		if err != nil {
			return err
		}
		began := time.Now()
		if err = f(cn); err == nil || !IsConnectionError(err) {
			return err
		}
		c.drop(cn)
		if time.Since(began) > time.Second {
			backoff = 20 * time.Millisecond // the link worked for a while: not a failing loop
		}
		if ctx.Err() != nil {
			return fmt.Errorf("agent %s: %w (last error: %v)", c.addr, status.FromContextError(ctx.Err()).Err(), err)
		}
		c.log.Debug("agent connection lost, redialing", "agent", c.addr, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// Ping checks the agent is alive.
func (c *Client) Ping(ctx context.Context) error {
	return c.call(ctx, func(cn *conn) error {
		_, err := cn.agent.Ping(ctx, &agentv1.PingRequest{})
		return err
	})
}

// Info returns the agent's identity.
func (c *Client) Info(ctx context.Context) (resp *agentv1.InfoResponse, err error) {
	err = c.call(ctx, func(cn *conn) error {
		resp, err = cn.agent.Info(ctx, &agentv1.InfoRequest{})
		return err
	})
	return resp, err
}

// Start starts (or re-finds) an exec. Give an id to make retries safe.
func (c *Client) Start(ctx context.Context, req *agentv1.StartRequest) (resp *agentv1.StartResponse, err error) {
	err = c.call(ctx, func(cn *conn) error {
		resp, err = cn.exec.Start(ctx, req)
		return err
	})
	return resp, err
}

// Wait waits for an exec to finish.
func (c *Client) Wait(ctx context.Context, id string) (st *agentv1.ExecStatus, err error) {
	err = c.call(ctx, func(cn *conn) error {
		st, err = cn.exec.Wait(ctx, &agentv1.ExecRef{Id: id})
		return err
	})
	return st, err
}

// Get returns an exec's status.
func (c *Client) Get(ctx context.Context, id string) (st *agentv1.ExecStatus, err error) {
	err = c.call(ctx, func(cn *conn) error {
		st, err = cn.exec.Get(ctx, &agentv1.ExecRef{Id: id})
		return err
	})
	return st, err
}

// Signal signals an exec's process group.
func (c *Client) Signal(ctx context.Context, id string, sig int) error {
	return c.call(ctx, func(cn *conn) error {
		_, err := cn.exec.Signal(ctx, &agentv1.SignalRequest{Id: id, Signal: int32(sig)})
		return err
	})
}

// WriteStdin writes to an exec's stdin. Not retried on a broken link (a
// retry could write twice): the caller sees the error.
func (c *Client) WriteStdin(ctx context.Context, id string, data []byte) error {
	cn, err := c.get(ctx)
	if err != nil {
		return err
	}
	_, err = cn.exec.WriteStdin(ctx, &agentv1.WriteStdinRequest{Id: id, Data: data})
	if IsConnectionError(err) {
		c.drop(cn)
	}
	return err
}

// CloseStdin closes an exec's stdin.
func (c *Client) CloseStdin(ctx context.Context, id string) error {
	return c.call(ctx, func(cn *conn) error {
		_, err := cn.exec.CloseStdin(ctx, &agentv1.ExecRef{Id: id})
		return err
	})
}

// Resize resizes an exec's pty.
func (c *Client) Resize(ctx context.Context, id string, rows, cols uint32) error {
	return c.call(ctx, func(cn *conn) error {
		_, err := cn.exec.Resize(ctx, &agentv1.ResizeRequest{Id: id, Rows: rows, Cols: cols})
		return err
	})
}

// List lists the agent's execs.
func (c *Client) List(ctx context.Context) (execs []*agentv1.ExecStatus, err error) {
	err = c.call(ctx, func(cn *conn) error {
		resp, err := cn.exec.List(ctx, &agentv1.ListRequest{})
		if err == nil {
			execs = resp.Execs
		}
		return err
	})
	return execs, err
}

// Release releases a finished exec.
func (c *Client) Release(ctx context.Context, id string) error {
	return c.call(ctx, func(cn *conn) error {
		_, err := cn.exec.Release(ctx, &agentv1.ExecRef{Id: id})
		return err
	})
}
