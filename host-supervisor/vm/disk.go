package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
)

// MakeDataDisk writes a raw ext4 image of sizeMiB at path, populated from
// the host directory from ("" for an empty filesystem) with mkfs.ext4 -d:
// no loop device, no mount. Attach it with Config.DataDisk; imageinit mounts
// it at /data (the image needs DiskModules).
func MakeDataDisk(ctx context.Context, path string, sizeMiB int, from string) error {
	if sizeMiB <= 0 {
		sizeMiB = 64
	}
	os.Remove(path)
	args := []string{"-q", "-F", "-L", "sailbox-data", "-E", "root_owner=0:0"}
	if from != "" {
		args = append(args, "-d", from)
	}
	args = append(args, path, fmt.Sprintf("%dM", sizeMiB))
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", path, err, out)
	}
	return nil
}
