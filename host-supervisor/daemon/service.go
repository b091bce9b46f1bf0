package daemon

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/containerd/ttrpc"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"github.com/sailbox/sailbox/protocol/transport"
)

// Service serves supervisorv1.Supervisor over a Daemon.
type Service struct {
	D *Daemon
}

var _ supervisorv1.SupervisorService = (*Service)(nil)

func (s *Service) AddSandbox(ctx context.Context, req *supervisorv1.AddSandboxRequest) (*supervisorv1.Sandbox, error) {
	return s.D.AddSandboxVMM(ctx, req.Id, req.Agent, req.Labels, req.Qmp)
}

func (s *Service) RemoveSandbox(ctx context.Context, req *supervisorv1.SandboxRef) (*supervisorv1.RemoveSandboxResponse, error) {
	return &supervisorv1.RemoveSandboxResponse{}, s.D.RemoveSandbox(req.Id)
}

func (s *Service) ListSandboxes(ctx context.Context, req *supervisorv1.ListSandboxesRequest) (*supervisorv1.ListSandboxesResponse, error) {
	return &supervisorv1.ListSandboxesResponse{Sandboxes: s.D.ListSandboxes()}, nil
}

func (s *Service) Checkpointed(ctx context.Context, req *supervisorv1.GenerationRequest) (*supervisorv1.Sandbox, error) {
	return s.D.Checkpointed(req.Sandbox, req.Generation)
}

func (s *Service) RestoreGeneration(ctx context.Context, req *supervisorv1.GenerationRequest) (*supervisorv1.RestoreGenerationResponse, error) {
	return s.D.RestoreGeneration(req.Sandbox, req.Generation)
}

func (s *Service) StartExec(ctx context.Context, req *supervisorv1.StartExecRequest) (*supervisorv1.StartExecResponse, error) {
	return s.D.StartExec(ctx, req)
}

func (s *Service) GetExec(ctx context.Context, req *supervisorv1.ExecRef) (*supervisorv1.ExecRecord, error) {
	return s.D.GetExec(req.Sandbox, req.Id)
}

func (s *Service) WaitExec(ctx context.Context, req *supervisorv1.ExecRef) (*supervisorv1.ExecRecord, error) {
	return s.D.WaitExec(ctx, req.Sandbox, req.Id)
}

func (s *Service) ExecOutput(ctx context.Context, req *supervisorv1.ExecOutputRequest, srv supervisorv1.Supervisor_ExecOutputServer) error {
	return s.D.ExecOutput(ctx, req, srv.Send)
}

func (s *Service) SignalExec(ctx context.Context, req *supervisorv1.SignalExecRequest) (*supervisorv1.Empty, error) {
	return &supervisorv1.Empty{}, s.D.SignalExec(ctx, req.Sandbox, req.Id, req.Signal)
}

func (s *Service) WriteStdin(ctx context.Context, req *supervisorv1.WriteStdinRequest) (*supervisorv1.Empty, error) {
	return &supervisorv1.Empty{}, s.D.WriteStdin(ctx, req.Sandbox, req.Id, req.Data)
}

func (s *Service) CloseStdin(ctx context.Context, req *supervisorv1.ExecRef) (*supervisorv1.Empty, error) {
	return &supervisorv1.Empty{}, s.D.CloseStdin(ctx, req.Sandbox, req.Id)
}

func (s *Service) ResizeExec(ctx context.Context, req *supervisorv1.ResizeExecRequest) (*supervisorv1.Empty, error) {
	return &supervisorv1.Empty{}, s.D.ResizeExec(ctx, req.Sandbox, req.Id, req.Rows, req.Cols)
}

func (s *Service) ListExecs(ctx context.Context, req *supervisorv1.ListExecsRequest) (*supervisorv1.ListExecsResponse, error) {
	return s.D.ListExecs(req)
}

func (s *Service) DeleteExec(ctx context.Context, req *supervisorv1.ExecRef) (*supervisorv1.Empty, error) {
	return &supervisorv1.Empty{}, s.D.DeleteExec(req.Sandbox, req.Id)
}

func (s *Service) WaitListener(ctx context.Context, req *supervisorv1.WaitListenerRequest) (*agentv1.WaitListenerResponse, error) {
	return s.D.WaitListener(ctx, req.Sandbox, req.Request)
}

// Listen opens the control API socket: unix:///path only, mode 0600 (the
// API runs commands in sandboxes: only the owner may talk to it). A stale
// socket file is replaced.
func Listen(api string) (net.Listener, error) {
	a, err := transport.Parse(api)
	if err != nil {
		return nil, err
	}
	if a.Scheme != transport.SchemeUnix {
		return nil, fmt.Errorf("api %s: want unix:///path", api)
	}
	if fi, err := os.Lstat(a.Path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", a.Path); err == nil {
			c.Close()
			return nil, fmt.Errorf("api %s: another supervisor is serving there", api)
		}
		os.Remove(a.Path)
	}
	old := umask(0o177)
	l, err := net.Listen("unix", a.Path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("api %s: %w", api, err)
	}
	if err := os.Chmod(a.Path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("api %s: %w", api, err)
	}
	return l, nil
}

// Serve serves the control API on l until ctx ends.
func (d *Daemon) Serve(ctx context.Context, l net.Listener) error {
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	supervisorv1.RegisterSupervisorService(srv, &Service{D: d})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2e9)
	defer cancel()
	srv.Shutdown(sctx)
	return srv.Close()
}

func (s *Service) ReadFile(ctx context.Context, req *supervisorv1.ReadFileRequest, srv supervisorv1.Supervisor_ReadFileServer) error {
	return s.D.ReadFile(ctx, req.Sandbox, req.Request, srv.Send)
}

func (s *Service) StatFile(ctx context.Context, req *supervisorv1.StatFileRequest) (*agentv1.FileInfo, error) {
	return s.D.StatFile(ctx, req.Sandbox, req.Path)
}

func (s *Service) CallFunction(ctx context.Context, req *supervisorv1.CallFunctionRequest) (*agentv1.FunctionCallResponse, error) {
	return s.D.CallFunction(ctx, req.Sandbox, req.Request)
}

func (s *Service) Checkpoint(ctx context.Context, req *supervisorv1.CheckpointRequest) (*supervisorv1.CheckpointResponse, error) {
	return s.D.Checkpoint(ctx, req)
}

func (s *Service) Restore(ctx context.Context, req *supervisorv1.RestoreRequest) (*supervisorv1.RestoreResponse, error) {
	return s.D.Restore(ctx, req)
}

func (s *Service) Fork(ctx context.Context, req *supervisorv1.RestoreRequest) (*supervisorv1.RestoreResponse, error) {
	return s.D.Fork(ctx, req)
}

func (s *Service) Pause(ctx context.Context, req *supervisorv1.SandboxRef) (*supervisorv1.LifecycleState, error) {
	return s.D.Pause(ctx, req.Id)
}

func (s *Service) Sleep(ctx context.Context, req *supervisorv1.SandboxRef) (*supervisorv1.LifecycleState, error) {
	return s.D.Sleep(ctx, req.Id)
}

func (s *Service) Resume(ctx context.Context, req *supervisorv1.SandboxRef) (*supervisorv1.ResumeResponse, error) {
	return s.D.Resume(ctx, req.Id)
}
