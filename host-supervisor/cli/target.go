package cli

import (
	"context"
	"flag"
	"io"
	"os"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// Execer is what the exec subcommands need from whoever runs the command:
// an agent directly (--agent) or, through the daemon, a sandbox.
type Execer interface {
	Start(ctx context.Context, req *agentv1.StartRequest) (*agentv1.StartResponse, error)
	CopyOutput(ctx context.Context, id string, off agentclient.Offsets, follow bool, stdout, stderr io.Writer) (*agentv1.ExecStatus, agentclient.Offsets, error)
	Wait(ctx context.Context, id string) (*agentv1.ExecStatus, error)
	Get(ctx context.Context, id string) (*agentv1.ExecStatus, error)
	Signal(ctx context.Context, id string, sig int) error
	WriteStdin(ctx context.Context, id string, data []byte) error
	CloseStdin(ctx context.Context, id string) error
	Resize(ctx context.Context, id string, rows, cols uint32) error
	List(ctx context.Context) ([]*agentv1.ExecStatus, error)
	Release(ctx context.Context, id string) error
	Close() error
}

var _ Execer = (*agentclient.Client)(nil)

// target holds the flags that say which sandbox a command acts on.
type target struct {
	agent string
}

func (t *target) register(fs *flag.FlagSet) {
	fs.StringVar(&t.agent, "agent", os.Getenv("SAILBOX_AGENT"), "agent address: unix:///path, vsock://CID:PORT or hvsock:///path:PORT (env SAILBOX_AGENT)")
}

// agentClient returns a direct client to the agent named by --agent.
func (t *target) agentClient() (*agentclient.Client, error) {
	if t.agent == "" {
		return nil, invalid("no target: give --agent ADDR")
	}
	return agentclient.New(t.agent, agentclient.Options{})
}

// execer returns the backend that runs execs for this target.
func (t *target) execer() (Execer, error) {
	return t.agentClient()
}
