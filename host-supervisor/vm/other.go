//go:build !linux

package vm

import (
	"context"
	"fmt"
	"io"
)

// RunUp fails: the VM driver needs a Linux host (memfd, vhost-user,
// Pdeathsig).
func RunUp(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "error: Unimplemented: vm up needs a Linux host")
	return 125
}
