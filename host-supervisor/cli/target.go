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

// target holds the flags that say which sandbox a command acts on: an
// agent directly (--agent), or a sandbox of the durable daemon
// (--supervisor and --sandbox).
type target struct {
	agent      string
	supervisor string
	sandbox    string
	// Which were given as flags (a flag beats the environment).
	agentFlag, supervisorFlag bool
}

func (t *target) register(fs *flag.FlagSet) {
	t.agent = os.Getenv("SAILBOX_AGENT")
	t.supervisor = os.Getenv("SAILBOX_SUPERVISOR")
	fs.Func("agent", "agent address: unix:///path, vsock://CID:PORT or hvsock:///path:PORT (env SAILBOX_AGENT)", func(v string) error {
		t.agent, t.agentFlag = v, true
		return nil
	})
	fs.Func("supervisor", "supervisor control API, unix:///path (env SAILBOX_SUPERVISOR); with --sandbox", func(v string) error {
		t.supervisor, t.supervisorFlag = v, true
		return nil
	})
	fs.StringVar(&t.sandbox, "sandbox", os.Getenv("SAILBOX_SANDBOX"), "sandbox id registered with the supervisor (env SAILBOX_SANDBOX)")
}

// viaSupervisor reports whether the target is a supervisor's sandbox: a
// --supervisor flag, or a supervisor from the environment unless --agent
// was given.
func (t *target) viaSupervisor() bool {
	switch {
	case t.supervisor == "":
		return false
	case t.supervisorFlag:
		return true
	case t.agentFlag:
		return false
	}
	return t.agent == "" || t.sandbox != ""
}

// agentClient returns a direct client to the agent named by --agent, or to
// the agent of the supervisor's sandbox (commands the daemon does not
// proxy yet talk to the agent at the address it has registered).
func (t *target) agentClient() (*agentclient.Client, error) {
	if t.viaSupervisor() {
		if t.sandbox == "" {
			return nil, invalid("--supervisor needs --sandbox ID")
		}
		addr, err := supervisorAgentAddr(context.Background(), t)
		if err != nil {
			return nil, err
		}
		return agentclient.New(addr, agentclient.Options{})
	}
	if t.agent == "" {
		return nil, invalid("no target: give --agent ADDR (or --supervisor S --sandbox ID)")
	}
	return agentclient.New(t.agent, agentclient.Options{})
}

// supervisorAgentAddr asks the daemon for the agent address of the
// target's sandbox.
func supervisorAgentAddr(ctx context.Context, t *target) (string, error) {
	if t.sandbox == "" {
		return "", invalid("--supervisor needs --sandbox ID")
	}
	sc, err := newSupervisorClient(t.supervisor)
	if err != nil {
		return "", err
	}
	defer sc.Close()
	ctx, cancel := context.WithTimeout(ctx, supervisorReconnect)
	defer cancel()
	return sc.agentAddr(ctx, t.sandbox)
}

// execer returns the backend that runs execs for this target: the daemon
// (durable records) or the agent directly.
func (t *target) execer() (Execer, error) {
	if t.viaSupervisor() {
		if t.sandbox == "" {
			return nil, invalid("--supervisor needs --sandbox ID")
		}
		sc, err := newSupervisorClient(t.supervisor)
		if err != nil {
			return nil, err
		}
		return &supervisorExecer{c: sc, sandbox: t.sandbox}, nil
	}
	return t.agentClient()
}
