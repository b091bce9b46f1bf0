package cli

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func init() {
	register(&command{
		name:    "wait-listener",
		usage:   "(--agent ADDR | --supervisor S --sandbox ID) --port N [--protocol http|tcp|ssh] [--timeout DUR]",
		summary: "wait until a port in the sandbox accepts connections (tcp), answers HTTP, or sends an SSH banner",
		run:     runWaitListener,
	})
}

// listenerProtocols maps --protocol to the wire enum.
var listenerProtocols = map[string]agentv1.ListenerProtocol{
	"tcp":  agentv1.ListenerProtocol_LISTENER_PROTOCOL_TCP,
	"http": agentv1.ListenerProtocol_LISTENER_PROTOCOL_HTTP,
	"ssh":  agentv1.ListenerProtocol_LISTENER_PROTOCOL_SSH,
}

// defaultListenerTimeout is the SDK's listener(port).wait default.
const defaultListenerTimeout = 60 * time.Second

// listenerCallGrace lets the agent's own DeadlineExceeded (which says what
// it saw) arrive before the call's deadline cuts it off.
const listenerCallGrace = 10 * time.Second

func runWaitListener(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("wait-listener", flag.ContinueOnError)
	t.register(fs)
	port := fs.Int("port", 0, "TCP port in the sandbox (1..65535)")
	protoName := fs.String("protocol", "tcp", "tcp (accepts connections), http (answers HTTP) or ssh (sends its banner)")
	timeoutFlag := fs.String("timeout", "", "give up after this long (e.g. 30s; a bare number is seconds; default 60s)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return fail(stdio, err)
	}
	if len(pos) > 0 {
		return fail(stdio, invalid("wait-listener: unexpected arguments %q", pos))
	}
	if *port < 1 || *port > 65535 {
		return fail(stdio, invalid("wait-listener: --port %d: want 1..65535", *port))
	}
	proto, ok := listenerProtocols[strings.ToLower(*protoName)]
	if !ok {
		return fail(stdio, invalid("wait-listener: --protocol %q: want http, tcp or ssh", *protoName))
	}
	timeout, err := parseDuration(*timeoutFlag)
	if err != nil {
		return fail(stdio, err)
	}
	if timeout == 0 {
		timeout = defaultListenerTimeout
	}
	var resp *agentv1.WaitListenerResponse
	switch {
	case t.viaSupervisor():
		resp, err = waitListenerViaSupervisor(ctx, &t, uint32(*port), proto, timeout)
	case t.agent == "":
		return fail(stdio, invalid("no target: give --agent ADDR (or --supervisor S --sandbox ID)"))
	default:
		if _, err := transport.Parse(t.agent); err != nil {
			return fail(stdio, invalid("--agent: %v", err))
		}
		resp, err = waitListener(ctx, t.agent, uint32(*port), proto, timeout)
	}
	if err != nil {
		return fail(stdio, err)
	}
	fmt.Fprintf(stdio.Out, "ready port=%d protocol=%s bind=%s banner=%q elapsed=%v\n",
		resp.Port, strings.ToLower(strings.TrimPrefix(resp.Protocol.String(), "LISTENER_PROTOCOL_")),
		resp.BindAddress, resp.Banner, time.Duration(resp.ElapsedNs).Round(time.Microsecond))
	return 0
}

// waitListener calls Listener.Wait, redialing when the link drops (every
// snapshot resets vsock connections; waiting has no side effect, so calling
// again with the time left is safe). transport.Dial itself retries while
// the agent is not reachable yet.
func waitListener(ctx context.Context, addr string, port uint32, proto agentv1.ListenerProtocol, timeout time.Duration) (*agentv1.WaitListenerResponse, error) {
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(listenerCallGrace))
	defer cancel()
	for {
		nc, err := transport.Dial(ctx, addr)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "agent %s: %v", addr, err)
		}
		tc := ttrpc.NewClient(nc)
		left := time.Until(deadline)
		resp, err := agentv1.NewListenerClient(tc).Wait(ctx, &agentv1.WaitListenerRequest{
			Port: port, Protocol: proto, TimeoutMs: max(left.Milliseconds(), 1),
		})
		tc.Close()
		if err == nil || !agentclient.IsConnectionError(err) || ctx.Err() != nil || time.Until(deadline) <= 0 {
			return resp, err
		}
	}
}

// waitListenerViaSupervisor is the daemon's WaitListener pass-through: it
// wakes a sleeping sandbox and redials the agent itself; this side redials
// a daemon that restarts (waiting has no side effect).
func waitListenerViaSupervisor(ctx context.Context, t *target, port uint32, proto agentv1.ListenerProtocol, timeout time.Duration) (*agentv1.WaitListenerResponse, error) {
	if t.sandbox == "" {
		return nil, invalid("--supervisor needs --sandbox ID")
	}
	sc, err := newSupervisorClient(t.supervisor)
	if err != nil {
		return nil, err
	}
	defer sc.Close()
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(listenerCallGrace))
	defer cancel()
	var resp *agentv1.WaitListenerResponse
	err = sc.call(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		resp, err = api.WaitListener(ctx, &supervisorv1.WaitListenerRequest{Sandbox: t.sandbox, Request: &agentv1.WaitListenerRequest{
			Port: port, Protocol: proto, TimeoutMs: max(time.Until(deadline).Milliseconds(), 1),
		}})
		return err
	})
	return resp, err
}
