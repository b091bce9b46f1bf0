//go:build !linux

package rootfs

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Build needs Linux (chroot, namespaces, debootstrap).
func (b *Builder) Build(ctx context.Context, im Image) (*Result, error) {
	if err := im.Err(); err != nil {
		return nil, err
	}
	return nil, status.Error(codes.Unimplemented, "image builds need Linux")
}
