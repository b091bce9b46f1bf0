package sandbox

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/execstore"
	"github.com/sailbox/sailbox/protocol/ids"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"github.com/sailbox/sailbox/protocol/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Config tunes the registry.
type Config struct {
	// PingInterval is the health-check period (default 250ms), so a
	// restarted agent is reconnected well within a second.
	PingInterval time.Duration
	// PingTimeout bounds one health check (default 1s); two failures in a
	// row close the connection.
	PingTimeout time.Duration
	// DialTimeout bounds one (re)connection of an agent client (default 10s).
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// Instance identifies one agent process: a restarted agent (or a rebooted
// guest) is a different instance and knows none of the previous one's execs.
type Instance struct {
	BootID  string
	Pid     int32
	Started int64
}

// Sandbox is one registered sandbox.
type Sandbox struct {
	ID     string
	Addr   string
	Client *agentclient.Client

	ctx     context.Context // ends when the sandbox is removed or the registry closed
	cancel  context.CancelFunc
	done    chan struct{} // the health loop ended
	checked chan struct{} // the first health check is done

	mu         sync.Mutex
	generation uint64
	labels     map[string]string
	connected  bool
	since      time.Time
	lastErr    string
	instance   Instance
	removed    bool
}

// Context ends when the sandbox is removed (or the registry closes).
func (s *Sandbox) Context() context.Context { return s.ctx }

// Removed reports whether the sandbox was removed (as opposed to the registry closing).
func (s *Sandbox) Removed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removed
}

// Generation is the sandbox's last checkpoint generation.
func (s *Sandbox) Generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.generation
}

// Instance is the agent instance seen by the last successful health check
// (ok=false before the first).
func (s *Sandbox) Instance() (Instance, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.instance, s.instance != (Instance{})
}

// Connected reports whether the last health check succeeded.
func (s *Sandbox) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected
}

// CurrentInstance asks the agent who it is now (redialing as needed).
func (s *Sandbox) CurrentInstance(ctx context.Context) (Instance, error) {
	info, err := s.Client.Info(ctx)
	if err != nil {
		return Instance{}, err
	}
	return Instance{BootID: clip(info.BootId, 64), Pid: info.Pid, Started: info.StartedUnixNano}, nil
}

// Proto returns the sandbox as served by the API.
func (s *Sandbox) Proto() *supervisorv1.Sandbox {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := &supervisorv1.Sandbox{
		Id: s.ID, Agent: s.Addr, Generation: s.generation, Labels: maps.Clone(s.labels),
		Connected: s.connected, LastError: s.lastErr,
	}
	if s.connected {
		p.ConnectedSinceUnixNano = s.since.UnixNano()
	}
	return p
}

// health pings the agent until the sandbox goes away.
func (s *Sandbox) health(cfg Config, log *slog.Logger) {
	defer close(s.done)
	first := true
	fails := 0
	t := time.NewTicker(cfg.PingInterval)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(s.ctx, cfg.PingTimeout)
		inst, err := s.CurrentInstance(ctx)
		cancel()
		if s.ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		if err != nil {
			// Only a health check that timed out counts towards closing the
			// link: a refused or broken connection is already redialed by the
			// client, and closing now could cut a fresh, healthy one.
			if status.Code(err) == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded) {
				fails++
			}
			if s.connected {
				log.Warn("agent not answering", "sandbox", s.ID, "agent", s.Addr, "err", err)
			}
			s.connected = false
			s.lastErr = clip(err.Error(), 512)
		} else {
			fails = 0
			if !s.connected {
				log.Info("agent connected", "sandbox", s.ID, "agent", s.Addr, "pid", inst.Pid)
				s.connected, s.since, s.lastErr = true, time.Now(), ""
			}
			if s.instance != (Instance{}) && s.instance != inst {
				log.Warn("agent restarted: its execs are gone", "sandbox", s.ID, "old_pid", s.instance.Pid, "pid", inst.Pid)
			}
			s.instance = inst
		}
		s.mu.Unlock()
		if first {
			close(s.checked)
			first = false
		}
		if fails >= 2 {
			// A stalled link: close it so every call on it redials.
			s.Client.Close()
			fails = 0
		}
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Registry holds the sandboxes.
type Registry struct {
	cfg   Config
	log   *slog.Logger
	store *execstore.Store
	ctx   context.Context

	mu sync.Mutex
	m  map[string]*Sandbox
}

// NewRegistry loads the journalled sandboxes and starts their health loops;
// they stop when ctx ends.
func NewRegistry(ctx context.Context, store *execstore.Store, cfg Config) (*Registry, error) {
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 250 * time.Millisecond
	}
	if cfg.PingTimeout <= 0 {
		cfg.PingTimeout = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Registry{cfg: cfg, log: cfg.Logger, store: store, ctx: ctx, m: map[string]*Sandbox{}}
	sbs, err := store.Sandboxes()
	if err != nil {
		return nil, err
	}
	for _, p := range sbs {
		if _, err := r.add(p); err != nil {
			r.log.Error("journalled sandbox unusable", "sandbox", p.Id, "err", err)
		}
	}
	return r, nil
}

func (r *Registry) add(p *supervisorv1.Sandbox) (*Sandbox, error) {
	cl, err := agentclient.New(p.Agent, agentclient.Options{DialTimeout: r.cfg.DialTimeout, Logger: r.log})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(r.ctx)
	s := &Sandbox{
		ID: p.Id, Addr: p.Agent, Client: cl, ctx: ctx, cancel: cancel, done: make(chan struct{}), checked: make(chan struct{}),
		generation: p.Generation, labels: maps.Clone(p.Labels),
	}
	r.m[s.ID] = s
	go s.health(r.cfg, r.log)
	return s, nil
}

// Add registers a sandbox, or updates the labels of a registered one with
// the same agent address. Another address under a registered id is
// FailedPrecondition (remove it first). It returns after the first health
// check (or about PingTimeout), so the state it reports is current.
func (r *Registry) Add(id, agent string, labels map[string]string) (*Sandbox, error) {
	if !ids.Valid(id) {
		return nil, status.Errorf(codes.InvalidArgument, "sandbox id %q: want 1-128 characters of [A-Za-z0-9._-]", id)
	}
	if _, err := transport.Parse(agent); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "sandbox %s: agent address: %v", id, err)
	}
	s, err := r.addOrUpdate(id, agent, labels)
	if err != nil {
		return nil, err
	}
	select {
	case <-s.checked:
	case <-s.done:
	case <-time.After(r.cfg.PingTimeout + 100*time.Millisecond):
	}
	return s, nil
}

func (r *Registry) addOrUpdate(id, agent string, labels map[string]string) (*Sandbox, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.m[id]; ok {
		if s.Addr != agent {
			return nil, status.Errorf(codes.FailedPrecondition, "sandbox %s is registered with agent %s; remove it first", id, s.Addr)
		}
		s.mu.Lock()
		s.labels = maps.Clone(labels)
		p := &supervisorv1.Sandbox{Id: id, Agent: agent, Generation: s.generation, Labels: s.labels}
		s.mu.Unlock()
		return s, r.store.PutSandbox(p)
	}
	p := &supervisorv1.Sandbox{Id: id, Agent: agent, Labels: labels}
	if err := r.store.PutSandbox(p); err != nil {
		return nil, err
	}
	return r.add(p)
}

// Get returns a sandbox (NotFound when unknown).
func (r *Registry) Get(id string) (*Sandbox, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.m[id]; ok {
		return s, nil
	}
	return nil, status.Errorf(codes.NotFound, "sandbox %s not found", id)
}

// List returns the sandboxes sorted by id.
func (r *Registry) List() []*Sandbox {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Sandbox, 0, len(r.m))
	for _, s := range r.m {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Remove forgets a sandbox and closes its client; its Context ends.
func (r *Registry) Remove(id string) error {
	r.mu.Lock()
	s, ok := r.m[id]
	if ok {
		delete(r.m, id)
	}
	r.mu.Unlock()
	if !ok {
		return status.Errorf(codes.NotFound, "sandbox %s not found", id)
	}
	if err := r.store.DeleteSandbox(id); err != nil {
		return err
	}
	s.mu.Lock()
	s.removed = true
	s.mu.Unlock()
	s.cancel()
	<-s.done
	s.Client.Close()
	return nil
}

// SetGeneration records the sandbox's checkpoint generation durably.
func (r *Registry) SetGeneration(id string, gen uint64) (*Sandbox, error) {
	s, err := r.Get(id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.generation = gen
	p := &supervisorv1.Sandbox{Id: id, Agent: s.Addr, Generation: gen, Labels: s.labels}
	s.mu.Unlock()
	return s, r.store.PutSandbox(p)
}

// Close stops every health loop and closes every client (the registry's
// context must have ended, or ends here for the sandboxes).
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.m {
		s.cancel()
		<-s.done
		s.Client.Close()
	}
}
