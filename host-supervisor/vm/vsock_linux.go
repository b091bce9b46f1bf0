package vm

import (
	"log/slog"

	"github.com/sailbox/sailbox/host-supervisor/vsockbackend"
)

// DefaultVsock is sailbox's own vhost-user-vsock backend with its
// Firecracker-style hybrid socket.
func DefaultVsock(cid uint64, vhostUser, hybrid string, log *slog.Logger) (VsockDevice, error) {
	return vsockbackend.New(vsockbackend.Config{GuestCID: cid, VhostUserSocket: vhostUser, HybridSocket: hybrid, Logger: log})
}
