package service

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/sailbox/sailbox/guest-agent/freeze"
	"github.com/sailbox/sailbox/guest-agent/resume"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Snapshot serves agentv1.Snapshot over a freeze.Freezer and a
// resume.Resumer. Other services that write files on the host's behalf
// call F.CheckWritable first.
type Snapshot struct {
	F *freeze.Freezer
	R *resume.Resumer
}

var _ agentv1.SnapshotService = (*Snapshot)(nil)

// SnapshotConfig configures NewSnapshot.
type SnapshotConfig struct {
	// StateDir holds the freeze state file (it must be tmpfs or otherwise
	// never frozen; its filesystem is excluded from freezing).
	StateDir string
	// HooksDir holds the freeze/thaw hooks.
	HooksDir string
	// Root limits freezing to filesystems mounted at or below it; "" or "/"
	// means all. Local (non-VM) agents and tests set it to a scratch dir.
	Root     string
	Watchdog time.Duration
	// Starter starts hook processes; the agent passes its reaper.
	Starter freeze.Starter
	Logger  *slog.Logger
}

// NewSnapshot builds the freezer and resumer of the agent.
func NewSnapshot(cfg SnapshotConfig) (*Snapshot, error) {
	fc := freeze.Config{
		HooksDir: cfg.HooksDir, Watchdog: cfg.Watchdog, Starter: cfg.Starter, Logger: cfg.Logger,
	}
	if cfg.StateDir != "" {
		fc.StateFile = filepath.Join(cfg.StateDir, "freeze-state.json") // its dir is excluded
	}
	if root := filepath.Clean(cfg.Root); cfg.Root != "" && root != "/" {
		fc.Select = func(m freeze.Mount) bool {
			return m.MountPoint == root || strings.HasPrefix(m.MountPoint, root+"/")
		}
	}
	f, err := freeze.New(fc)
	if err != nil {
		return nil, err
	}
	r, err := resume.New(resume.Config{Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	return &Snapshot{F: f, R: r}, nil
}

func (s *Snapshot) Freeze(ctx context.Context, req *agentv1.FreezeRequest) (*agentv1.FreezeResponse, error) {
	if req.WatchdogMs < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "watchdog_ms %d is negative", req.WatchdogMs)
	}
	rep, err := s.F.Freeze(ctx, freeze.Options{Cgroups: req.Cgroups, Watchdog: time.Duration(req.WatchdogMs) * time.Millisecond})
	if err != nil {
		return nil, err
	}
	out := &agentv1.FreezeResponse{
		Frozen: rep.Frozen, Cgroups: rep.Cgroups, Hooks: rep.Hooks, AlreadyFrozen: rep.AlreadyFrozen,
		SinceUnixNano: unixNano(rep.Since), WatchdogDeadlineUnixNano: unixNano(rep.WatchdogDeadline),
	}
	for _, sk := range rep.Skipped {
		out.Skipped = append(out.Skipped, &agentv1.SkippedMount{MountPoint: sk.MountPoint, FsType: sk.FSType, Reason: sk.Reason})
	}
	return out, nil
}

func (s *Snapshot) Thaw(ctx context.Context, req *agentv1.ThawRequest) (*agentv1.ThawResponse, error) {
	rep, err := s.F.Thaw(ctx)
	if err != nil {
		return nil, err
	}
	return &agentv1.ThawResponse{
		WasFrozen: rep.WasFrozen, FrozenForNs: rep.FrozenFor.Nanoseconds(), Thawed: rep.Thawed,
		Cgroups: rep.Cgroups, Hooks: rep.Hooks, Warnings: rep.Warnings,
	}, nil
}

func (s *Snapshot) FreezeStatus(ctx context.Context, req *agentv1.FreezeStatusRequest) (*agentv1.FreezeStatusResponse, error) {
	st := s.F.Status()
	return &agentv1.FreezeStatusResponse{
		Frozen: st.State == freeze.Frozen, SinceUnixNano: unixNano(st.Since), Mounts: st.Mounts, Cgroups: st.Cgroups,
		WatchdogDeadlineUnixNano: unixNano(st.WatchdogDeadline), LastThaw: st.LastThaw, LastThawError: st.LastThawError,
	}, nil
}

func (s *Snapshot) Resume(ctx context.Context, req *agentv1.ResumeRequest) (*agentv1.ResumeResponse, error) {
	r, err := ResumeRequestFromProto(req)
	if err != nil {
		return nil, err
	}
	rep, err := s.R.Apply(ctx, r)
	if err != nil {
		return nil, err
	}
	return ResumeResponseProto(rep), nil
}

// ResumeRequestFromProto parses the wire request; malformed addresses are
// InvalidArgument. The resumer checks the rest.
func ResumeRequestFromProto(req *agentv1.ResumeRequest) (resume.Request, error) {
	r := resume.Request{Entropy: req.Entropy, Generation: req.Generation, DropConnections: req.DropConnections}
	if req.HostTimeUnixNano != 0 {
		r.HostTime = time.Unix(0, req.HostTimeUnixNano)
	}
	id := req.Identity
	if id == nil {
		return r, nil
	}
	r.Identity = &resume.Identity{Hostname: id.Hostname, SandboxID: id.SandboxId}
	for _, ni := range id.Interfaces {
		ifc := resume.Interface{Name: ni.Name}
		if ni.Mac != "" {
			mac, err := net.ParseMAC(ni.Mac)
			if err != nil {
				return r, status.Errorf(codes.InvalidArgument, "interface %s: mac %q: %v", ni.Name, ni.Mac, err)
			}
			ifc.MAC = mac
		}
		if ni.ReplaceAddresses || len(ni.Addresses) > 0 {
			ifc.Addresses = []netip.Prefix{}
		}
		for _, a := range ni.Addresses {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return r, status.Errorf(codes.InvalidArgument, "interface %s: address %q: %v", ni.Name, a, err)
			}
			ifc.Addresses = append(ifc.Addresses, p)
		}
		for _, g := range ni.Gateways {
			a, err := netip.ParseAddr(g)
			if err != nil {
				return r, status.Errorf(codes.InvalidArgument, "interface %s: gateway %q: %v", ni.Name, g, err)
			}
			ifc.Gateways = append(ifc.Gateways, a)
		}
		r.Identity.Interfaces = append(r.Identity.Interfaces, ifc)
	}
	return r, nil
}

// ResumeResponseProto maps a resume.Report to the wire.
func ResumeResponseProto(rep resume.Report) *agentv1.ResumeResponse {
	out := &agentv1.ResumeResponse{
		Generation: rep.Generation, PreviousGeneration: rep.PreviousGeneration,
		ClockOffsetNs: rep.ClockOffset.Nanoseconds(), ClockStepped: rep.ClockStepped,
		EntropyBytes: uint32(rep.EntropyBytes), CrngReseeded: rep.CRNGReseeded,
		Hostname: rep.Hostname, SandboxId: rep.SandboxID,
		ConnectionsDropped: uint32(rep.ConnectionsDropped), ConnectionsKept: uint32(rep.ConnectionsKept),
	}
	for _, ir := range rep.Interfaces {
		out.Interfaces = append(out.Interfaces, &agentv1.InterfaceChange{
			Name: ir.Name, MacChanged: ir.MACChanged, AddressesAdded: strs(ir.AddressesAdded),
			AddressesRemoved: strs(ir.AddressesRemoved), Gateways: strs(ir.Gateways),
		})
	}
	return out
}

func strs[T interface{ String() string }](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return out
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}
