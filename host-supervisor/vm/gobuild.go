package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
)

// BuildArm64 compiles the main package pkg (an import path of this module)
// as a static linux/arm64 binary at out. It is for tests and for running
// from a checkout; `make build` produces the same binaries in bin/linux-arm64.
func BuildArm64(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s (linux/arm64): %w: %s", pkg, err, b)
	}
	return nil
}
