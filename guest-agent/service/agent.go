package service

import (
	"context"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/sailbox/sailbox/guest-agent/execengine"
	"github.com/sailbox/sailbox/internal/version"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// Agent serves agentv1.Agent: health and identity.
type Agent struct {
	Started time.Time
	M       *execengine.Manager
}

var _ agentv1.AgentService = (*Agent)(nil)

func (s *Agent) Ping(ctx context.Context, req *agentv1.PingRequest) (*agentv1.PingResponse, error) {
	return &agentv1.PingResponse{}, nil
}

func (s *Agent) Info(ctx context.Context, req *agentv1.InfoRequest) (*agentv1.InfoResponse, error) {
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	host, _ := os.Hostname()
	return &agentv1.InfoResponse{
		Version: version.Version, StartedUnixNano: s.Started.UnixNano(),
		BootId: strings.TrimSpace(string(bootID)), Hostname: host, Arch: runtime.GOARCH,
		Pid: int32(os.Getpid()), Execs: uint32(s.M.Len()),
	}, nil
}
