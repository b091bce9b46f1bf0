package local

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/daemon"
	"github.com/sailbox/sailbox/host-supervisor/execstore"
	"github.com/sailbox/sailbox/host-supervisor/repl"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SandboxID is the local sandbox's id in the journal.
const SandboxID = "local"

// Journaled is a REPL backend whose execs go through the durable supervisor
// (host-supervisor/daemon) in-process: every exec is journalled in the state
// dir before it is sent, its output is stored there, and the records outlive
// the session. Execs that were running when an earlier session ended are
// reported lost (their agent is gone), never run again. Everything else
// (info, files, listeners, freeze) goes to the agent directly.
type Journaled struct {
	*repl.Agent
	d    *daemon.Daemon
	logf *os.File
}

var _ repl.Backend = (*Journaled)(nil)

// OpenJournal opens (or creates) the journal in dir and registers the local
// sandbox's agent in it. Call it once the agent answers: reopening resolves
// the records an earlier session left unfinished by asking the agent.
func OpenJournal(dir, addr string) (*Journaled, error) {
	a, err := repl.DialAgent(addr)
	if err != nil {
		return nil, err
	}
	// The supervisor's own log goes to a file: the terminal is the REPL's.
	logf, err := os.OpenFile(filepath.Join(dir, "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		a.Close()
		return nil, err
	}
	d, err := daemon.Open(daemon.Config{StateDir: filepath.Join(dir, "supervisor"), Logger: slog.New(slog.NewTextHandler(logf, nil))})
	if err != nil {
		a.Close()
		logf.Close()
		return nil, fmt.Errorf("journal in %s: %w", dir, err)
	}
	j := &Journaled{Agent: a, d: d, logf: logf}
	if _, err := d.AddSandbox(SandboxID, addr, map[string]string{"kind": "local"}); err != nil {
		j.Close()
		return nil, err
	}
	return j, nil
}

// Close closes the journal (nothing is marked lost by closing) and the agent connection.
func (j *Journaled) Close() error {
	err := j.d.Close()
	j.Agent.Close()
	j.logf.Close()
	return err
}

// Start journals and starts an exec.
func (j *Journaled) Start(ctx context.Context, req *agentv1.StartRequest) (*agentv1.StartResponse, error) {
	resp, err := j.d.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: SandboxID, Request: req})
	if err != nil {
		return nil, err
	}
	return &agentv1.StartResponse{Status: execstore.AgentStatus(resp.Record), Created: resp.Created}, nil
}

// CopyOutput copies the stored output; with follow it ends with the final
// status (an error for a lost or failed exec).
func (j *Journaled) CopyOutput(ctx context.Context, id string, off agentclient.Offsets, follow bool, stdout, stderr io.Writer) (*agentv1.ExecStatus, agentclient.Offsets, error) {
	var final *execstore.Record
	err := j.d.ExecOutput(ctx, &supervisorv1.ExecOutputRequest{
		Sandbox: SandboxID, Id: id, StdoutOffset: off.Stdout, StderrOffset: off.Stderr, Follow: follow,
	}, func(c *supervisorv1.ExecOutputChunk) error {
		if c.Final != nil {
			final = c.Final
			return nil
		}
		err := off.Deliver(id, c.Stream, c.Offset, c.Data, stdout, stderr)
		if lw, ok := err.(*agentclient.LocalWriteError); ok {
			return lw.Err
		}
		return err
	})
	if err != nil || final == nil {
		return nil, off, err
	}
	st, err := finalStatus(final)
	return st, off, err
}

// Wait waits for an exec's final record.
func (j *Journaled) Wait(ctx context.Context, id string) (*agentv1.ExecStatus, error) {
	rec, err := j.d.WaitExec(ctx, SandboxID, id)
	if err != nil {
		return nil, err
	}
	return finalStatus(rec)
}

func (j *Journaled) Signal(ctx context.Context, id string, sig int) error {
	return j.d.SignalExec(ctx, SandboxID, id, int32(sig))
}

func (j *Journaled) WriteStdin(ctx context.Context, id string, data []byte) error {
	return j.d.WriteStdin(ctx, SandboxID, id, data)
}

func (j *Journaled) CloseStdin(ctx context.Context, id string) error {
	return j.d.CloseStdin(ctx, SandboxID, id)
}

func (j *Journaled) Resize(ctx context.Context, id string, rows, cols uint32) error {
	return j.d.ResizeExec(ctx, SandboxID, id, rows, cols)
}

// List lists the journal's records of the local sandbox, oldest first.
func (j *Journaled) List(ctx context.Context) ([]*agentv1.ExecStatus, error) {
	var out []*agentv1.ExecStatus
	req := &supervisorv1.ListExecsRequest{Sandbox: SandboxID, PageSize: 1000}
	for {
		resp, err := j.d.ListExecs(req)
		if err != nil {
			return nil, err
		}
		for _, r := range resp.Execs {
			out = append(out, execstore.AgentStatus(r))
		}
		if resp.NextPageToken == "" {
			return out, nil
		}
		req.PageToken = resp.NextPageToken
	}
}

// Release deletes a record and its stored output.
func (j *Journaled) Release(ctx context.Context, id string) error {
	return j.d.DeleteExec(SandboxID, id)
}

// finalStatus is a final record's status, or the error a lost or failed
// exec stands for.
func finalStatus(r *execstore.Record) (*agentv1.ExecStatus, error) {
	switch r.State {
	case execstore.Lost:
		return nil, status.Errorf(codes.Aborted, "exec %s was lost: %s", r.Id, r.Reason)
	case execstore.Failed:
		code := codes.Code(r.ErrorCode)
		if code == codes.OK {
			code = codes.Internal
		}
		return nil, status.Errorf(code, "exec %s failed: %s", r.Id, r.Reason)
	}
	return execstore.AgentStatus(r), nil
}
