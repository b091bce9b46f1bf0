package lifecycle

import (
	"context"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Manager holds the lifecycle of every sandbox that has a VMM attached: what
// the daemon keeps to serve the lifecycle verbs and to wake a sleeping
// sandbox before it forwards an exec or ingress (Wake).
type Manager struct {
	mu sync.Mutex
	m  map[string]*Sandbox
}

// NewManager returns an empty Manager.
func NewManager() *Manager { return &Manager{m: map[string]*Sandbox{}} }

// Add attaches (or replaces) a sandbox's lifecycle.
func (m *Manager) Add(s *Sandbox) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.m[s.ID()] = s
}

// Remove detaches a sandbox.
func (m *Manager) Remove(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.m, id)
}

// Get returns a sandbox's lifecycle; NotFound when it has no VMM attached.
func (m *Manager) Get(id string) (*Sandbox, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.m[id]; s != nil {
		return s, nil
	}
	return nil, status.Errorf(codes.NotFound, "sandbox %s: no VMM attached (lifecycle operations need one)", id)
}

// Wake wakes a sleeping sandbox before an exec or ingress is forwarded to
// it. A sandbox without a VMM never sleeps: nil. A nil Manager is valid.
func (m *Manager) Wake(ctx context.Context, id string) error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	s := m.m[id]
	m.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.Wake(ctx)
}
