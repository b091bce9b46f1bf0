package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func init() {
	register(&command{
		name:    "call",
		usage:   "--agent ADDR [--timeout DUR] [--out FILE] [--cwd DIR] [--env K=V]... PAYLOAD_FILE",
		summary: "run a pickled (callable, args, kwargs) with the sandbox's python3; the pickled result goes to stdout",
		run:     runCall,
	})
}

// ExitRemoteException is call's exit status when the function raised.
const ExitRemoteException = 1

// runCall runs a function call. PAYLOAD_FILE "-" is stdin. The pickled
// result goes to stdout, or to --out FILE; the function's own prints go to
// stderr while stdout carries the result, and to stdout/stderr with --out.
// A remote exception prints its traceback to stderr and exits 1; a timeout
// exits 124; other errors exit 125.
func runCall(ctx context.Context, stdio Stdio, args []string) int {
	var t target
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	t.register(fs)
	timeoutFlag := fs.String("timeout", "", "kill the call after this long (e.g. 30s; a bare number is seconds)")
	outPath := fs.String("out", "", "write the pickled result to FILE instead of stdout")
	cwd := fs.String("cwd", "", "working directory in the sandbox")
	var env stringList
	fs.Var(&env, "env", "KEY=VALUE added to the environment (repeatable)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return fail(stdio, err)
	}
	if len(pos) != 1 {
		return fail(stdio, invalid("call: want exactly one PAYLOAD_FILE, got %d arguments", len(pos)))
	}
	timeout, err := parseDuration(*timeoutFlag)
	if err != nil {
		return fail(stdio, err)
	}
	payload, err := readPayload(stdio, pos[0])
	if err != nil {
		return fail(stdio, err)
	}
	cl, err := t.agentClient()
	if err != nil {
		return fail(stdio, err)
	}
	defer cl.Close()
	resp, err := cl.CallFunction(ctx, &agentv1.FunctionCallRequest{
		Payload: payload, TimeoutMs: timeout.Milliseconds(), Cwd: *cwd, Env: env,
	})
	if resp != nil {
		printsOut := stdio.Err
		if *outPath != "" {
			printsOut = stdio.Out
		}
		printsOut.Write(resp.Stdout)
		stdio.Err.Write(resp.Stderr)
		for _, s := range []struct {
			name    string
			dropped uint64
		}{{"stdout", resp.StdoutDropped}, {"stderr", resp.StderrDropped}} {
			if s.dropped > 0 {
				fmt.Fprintf(stdio.Err, "warning: function %s truncated: %d more bytes dropped\n", s.name, s.dropped)
			}
		}
	}
	var remote *agentclient.RemoteError
	switch {
	case errors.As(err, &remote):
		fmt.Fprint(stdio.Err, remote.Traceback)
		if remote.Traceback == "" {
			fmt.Fprintf(stdio.Err, "%s: %s\n", remote.Type, remote.Message)
		}
		return ExitRemoteException
	case status.Code(err) == codes.DeadlineExceeded && resp != nil:
		fail(stdio, err)
		return ExitTimedOut
	case err != nil:
		return fail(stdio, err)
	}
	if *outPath != "" {
		if err := os.WriteFile(*outPath, resp.Result, 0o644); err != nil {
			return fail(stdio, status.Errorf(codes.Internal, "write result: %v", err))
		}
		return 0
	}
	if _, err := stdio.Out.Write(resp.Result); err != nil {
		return fail(stdio, status.Errorf(codes.Internal, "write result: %v", err))
	}
	return 0
}

func readPayload(stdio Stdio, path string) ([]byte, error) {
	var r io.Reader = stdio.In
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, invalid("call: payload: %v", err)
		}
		defer f.Close()
		r = f
	}
	// One byte over the limit is enough to refuse it.
	b, err := io.ReadAll(io.LimitReader(r, agentclient.MaxFunctionPayload+1))
	if err != nil {
		return nil, invalid("call: payload: %v", err)
	}
	if len(b) > agentclient.MaxFunctionPayload {
		return nil, status.Errorf(codes.ResourceExhausted,
			"call: payload %s is over the %d MiB limit: write large data to a file in the sandbox (host-supervisor write) and pass its path instead",
			path, agentclient.MaxFunctionPayload>>20)
	}
	return b, nil
}
