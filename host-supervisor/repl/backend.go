package repl

import (
	"context"
	"io"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// Backend is what the REPL drives: one sandbox's agent. *Agent implements
// it over the agent protocol.
type Backend interface {
	// Exec service (see agentclient.Client).
	Start(ctx context.Context, req *agentv1.StartRequest) (*agentv1.StartResponse, error)
	CopyOutput(ctx context.Context, id string, off agentclient.Offsets, follow bool, stdout, stderr io.Writer) (*agentv1.ExecStatus, agentclient.Offsets, error)
	Wait(ctx context.Context, id string) (*agentv1.ExecStatus, error)
	Signal(ctx context.Context, id string, sig int) error
	WriteStdin(ctx context.Context, id string, data []byte) error
	CloseStdin(ctx context.Context, id string) error
	Resize(ctx context.Context, id string, rows, cols uint32) error
	List(ctx context.Context) ([]*agentv1.ExecStatus, error)
	Release(ctx context.Context, id string) error

	// Agent service.
	Ping(ctx context.Context) error
	Info(ctx context.Context) (*agentv1.InfoResponse, error)

	// Listener service.
	WaitListener(ctx context.Context, req *agentv1.WaitListenerRequest) (*agentv1.WaitListenerResponse, error)

	// Snapshot service.
	Freeze(ctx context.Context, req *agentv1.FreezeRequest) (*agentv1.FreezeResponse, error)
	Thaw(ctx context.Context, req *agentv1.ThawRequest) (*agentv1.ThawResponse, error)
	FreezeStatus(ctx context.Context, req *agentv1.FreezeStatusRequest) (*agentv1.FreezeStatusResponse, error)

	// Files service.
	WriteFile(ctx context.Context, path string, r io.Reader, o agentclient.WriteOptions) (*agentv1.FileInfo, error)
	ReadFile(ctx context.Context, path string, w io.Writer, o agentclient.ReadOptions) (*agentv1.FileInfo, uint64, error)
	StatFile(ctx context.Context, path string) (*agentv1.FileInfo, error)

	Close() error
}
