package cli

import (
	"context"

	"github.com/sailbox/sailbox/host-supervisor/vm"
	"github.com/sailbox/sailbox/rootfs"
)

func init() {
	register(&command{
		name:    "vm",
		usage:   "up [--name N] [--image IMG] [flags]",
		summary: "boot a real arm64 sandbox VM under QEMU (vhost-user-vsock backend in this process)",
		run: func(ctx context.Context, stdio Stdio, args []string) int {
			if len(args) == 0 || args[0] != "up" {
				return fail(stdio, invalid("vm: want `vm up`"))
			}
			return vm.RunUp(ctx, args[1:], stdio.Out, stdio.Err)
		},
	})
	register(&command{
		name:    "image",
		usage:   "build FILE | ls | rm REF...",
		summary: "build, list and remove root images from image definitions",
		run: func(ctx context.Context, stdio Stdio, args []string) int {
			return rootfs.RunImageCommand(ctx, args, stdio.Out, stdio.Err)
		},
	})
}
