package resume

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Request is what the host sends after a restore or fork.
type Request struct {
	HostTime   time.Time // host wall clock when the request was made
	Entropy    []byte    // fresh random bytes from the host (>= MinEntropy)
	Generation uint64    // the sandbox's checkpoint generation
	// Identity is set for a fork: the guest becomes a new sandbox.
	Identity *Identity
	// DropConnections drops established TCP connections even without a new
	// identity (for instance after a restore whose peers are gone). A new
	// identity always drops them.
	DropConnections bool
}

// Identity is a fork's new identity.
type Identity struct {
	Hostname   string // empty keeps the hostname
	SandboxID  string
	Interfaces []Interface
}

// Interface is the new configuration of one guest network interface.
type Interface struct {
	Name string           // guest interface name, e.g. eth0
	MAC  net.HardwareAddr // nil keeps the MAC
	// Addresses replace the interface's global addresses (link-local IPv6
	// addresses stay). nil keeps the addresses.
	Addresses []netip.Prefix
	// Gateways become the default routes via this interface, at most one
	// per address family.
	Gateways []netip.Addr
}

// InterfaceReport says what changed on one interface.
type InterfaceReport struct {
	Name             string
	MACChanged       bool
	AddressesAdded   []netip.Prefix
	AddressesRemoved []netip.Prefix
	Gateways         []netip.Addr
}

// Report says what Apply did.
type Report struct {
	Generation         uint64
	PreviousGeneration uint64
	ClockOffset        time.Duration // guest minus host before any step
	ClockStepped       bool
	EntropyBytes       int
	CRNGReseeded       bool
	Hostname           string // set only when changed
	SandboxID          string
	Interfaces         []InterfaceReport
	ConnectionsDropped int
	ConnectionsKept    int // established loopback connections, left alone
}

// MinEntropy is the least entropy a request must carry.
const MinEntropy = 64

// MaxEntropy bounds what one request may carry.
const MaxEntropy = 64 << 10

// Clock reads and steps the wall clock.
type Clock interface {
	Now() time.Time
	Set(time.Time) error
}

// Entropy feeds the kernel's random pool.
type Entropy interface {
	// Add mixes b into the input pool and credits it as entropy.
	Add(b []byte) error
	// Reseed makes the CRNG reseed from the pool now.
	Reseed() error
}

// Hostnamer sets the kernel hostname.
type Hostnamer interface {
	Hostname() (string, error)
	SetHostname(string) error
}

// Network reconfigures one interface.
type Network interface {
	Configure(ctx context.Context, ifc Interface) (InterfaceReport, error)
}

// Conn is one TCP connection seen by Sockets.
type Conn struct {
	Local, Remote netip.AddrPort
}

// Sockets drops TCP connections.
type Sockets interface {
	// DropEstablished destroys every non-listening TCP socket for which
	// keep returns false, and reports how many it destroyed and kept.
	DropEstablished(ctx context.Context, keep func(Conn) bool) (dropped, kept int, err error)
}

// Config selects the implementations and thresholds; zero fields take the
// Linux implementations and the defaults.
type Config struct {
	Clock   Clock
	Entropy Entropy
	Host    Hostnamer
	Net     Network
	Sockets Sockets
	// The clock is stepped when the guest is more than MaxBehind behind
	// the host (default 50 ms) or more than MaxAhead ahead (default 1 s;
	// larger, because the host's time is already in the past on arrival).
	MaxBehind time.Duration
	MaxAhead  time.Duration
	Logger    *slog.Logger
}

// Resumer applies resume requests. Apply calls are serialized.
type Resumer struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	generation uint64
	sandboxID  string
}

// New returns a Resumer.
func New(cfg Config) (*Resumer, error) {
	if cfg.MaxBehind <= 0 {
		cfg.MaxBehind = 50 * time.Millisecond
	}
	if cfg.MaxAhead <= 0 {
		cfg.MaxAhead = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Entropy == nil {
		cfg.Entropy = DevRandom{}
	}
	if cfg.Host == nil {
		cfg.Host = KernelHostname{}
	}
	if cfg.Sockets == nil {
		cfg.Sockets = SockDiag{}
	}
	if cfg.Net == nil {
		n, err := NewNetlink()
		if err != nil {
			return nil, fmt.Errorf("netlink: %w", err)
		}
		cfg.Net = n
	}
	return &Resumer{cfg: cfg, log: cfg.Logger.With("component", "resume")}, nil
}

// Generation returns the last applied generation and sandbox id.
func (r *Resumer) Generation() (uint64, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.generation, r.sandboxID
}

// Apply validates req and then, in order: adds the entropy and reseeds the
// CRNG, steps the clock if it is off, applies the identity, drops stale TCP
// connections, and records the generation. Applying the same generation
// again is harmless; an older generation is refused with FailedPrecondition.
// On a failed step the report holds what was done before it.
func (r *Resumer) Apply(ctx context.Context, req Request) (Report, error) {
	if err := validate(req); err != nil {
		return Report{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := Report{Generation: req.Generation, PreviousGeneration: r.generation}
	if req.Generation < r.generation {
		return rep, status.Errorf(codes.FailedPrecondition, "resume generation %d is older than the applied generation %d", req.Generation, r.generation)
	}

	// Entropy first: anything random generated after this point differs
	// between forks.
	if err := r.cfg.Entropy.Add(req.Entropy); err != nil {
		return rep, status.Errorf(codes.Internal, "add entropy to /dev/random: %v", err)
	}
	rep.EntropyBytes = len(req.Entropy)
	if err := r.cfg.Entropy.Reseed(); err != nil {
		return rep, status.Errorf(codes.Internal, "reseed CRNG: %v", err)
	}
	rep.CRNGReseeded = true

	guest := r.cfg.Clock.Now()
	rep.ClockOffset = guest.Sub(req.HostTime)
	if rep.ClockOffset < -r.cfg.MaxBehind || rep.ClockOffset > r.cfg.MaxAhead {
		if err := r.cfg.Clock.Set(req.HostTime); err != nil {
			return rep, status.Errorf(codes.Internal, "set clock to %s (off by %s): %v", req.HostTime.UTC().Format(time.RFC3339Nano), rep.ClockOffset, err)
		}
		rep.ClockStepped = true
	}

	if id := req.Identity; id != nil {
		if id.Hostname != "" {
			cur, err := r.cfg.Host.Hostname()
			if err != nil || cur != id.Hostname {
				if err := r.cfg.Host.SetHostname(id.Hostname); err != nil {
					return rep, status.Errorf(codes.Internal, "set hostname %q: %v", id.Hostname, err)
				}
				rep.Hostname = id.Hostname
			}
		}
		for _, ifc := range id.Interfaces {
			ir, err := r.cfg.Net.Configure(ctx, ifc)
			if err != nil {
				if _, ok := status.FromError(err); !ok {
					err = status.Errorf(codes.Internal, "interface %s: %v", ifc.Name, err)
				}
				return rep, err
			}
			rep.Interfaces = append(rep.Interfaces, ir)
		}
		if id.SandboxID != "" {
			r.sandboxID = id.SandboxID
		}
	}
	rep.SandboxID = r.sandboxID

	if req.Identity != nil || req.DropConnections {
		dropped, kept, err := r.cfg.Sockets.DropEstablished(ctx, keepLoopback)
		rep.ConnectionsDropped, rep.ConnectionsKept = dropped, kept
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				err = status.Errorf(codes.Internal, "drop TCP connections: %v", err)
			}
			return rep, err
		}
	}
	r.generation = req.Generation
	r.log.Info("resumed", "generation", req.Generation, "clock_offset", rep.ClockOffset, "clock_stepped", rep.ClockStepped,
		"entropy", rep.EntropyBytes, "hostname", rep.Hostname, "interfaces", len(rep.Interfaces), "dropped", rep.ConnectionsDropped)
	return rep, nil
}

// keepLoopback keeps connections inside the guest: both ends live on in the
// fork, so they stay valid.
func keepLoopback(c Conn) bool {
	return c.Local.Addr().Unmap().IsLoopback() && c.Remote.Addr().Unmap().IsLoopback()
}

func validate(req Request) error {
	if req.HostTime.IsZero() {
		return status.Error(codes.InvalidArgument, "resume: host time missing")
	}
	if n := len(req.Entropy); n < MinEntropy || n > MaxEntropy {
		return status.Errorf(codes.InvalidArgument, "resume: %d entropy bytes; want %d to %d", n, MinEntropy, MaxEntropy)
	}
	id := req.Identity
	if id == nil {
		return nil
	}
	if id.Hostname != "" && !validHostname(id.Hostname) {
		return status.Errorf(codes.InvalidArgument, "resume: hostname %q: want at most 64 characters of letters, digits, '-' and '.'", id.Hostname)
	}
	seen := map[string]bool{}
	for _, ifc := range id.Interfaces {
		if ifc.Name == "" || len(ifc.Name) >= 16 || strings.ContainsAny(ifc.Name, "/ \x00") {
			return status.Errorf(codes.InvalidArgument, "resume: interface name %q invalid", ifc.Name)
		}
		if seen[ifc.Name] {
			return status.Errorf(codes.InvalidArgument, "resume: interface %s listed twice", ifc.Name)
		}
		seen[ifc.Name] = true
		if ifc.MAC != nil && len(ifc.MAC) != 6 {
			return status.Errorf(codes.InvalidArgument, "resume: interface %s: MAC %s is not an Ethernet address", ifc.Name, ifc.MAC)
		}
		for _, p := range ifc.Addresses {
			if !p.IsValid() || p.Addr().Zone() != "" {
				return status.Errorf(codes.InvalidArgument, "resume: interface %s: address %s invalid", ifc.Name, p)
			}
		}
		var v4, v6 int
		for _, g := range ifc.Gateways {
			if !g.IsValid() || g.IsUnspecified() {
				return status.Errorf(codes.InvalidArgument, "resume: interface %s: gateway %s invalid", ifc.Name, g)
			}
			if g.Unmap().Is4() {
				v4++
			} else {
				v6++
			}
		}
		if v4 > 1 || v6 > 1 {
			return status.Errorf(codes.InvalidArgument, "resume: interface %s: at most one gateway per address family", ifc.Name)
		}
	}
	return nil
}

func validHostname(h string) bool {
	if len(h) > 64 || h[0] == '-' || h[0] == '.' {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
