package freeze

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// freezeCgroup writes cgroup.freeze=1 and waits until cgroup.events says
// "frozen 1" (every task of the subtree stopped).
func freezeCgroup(ctx context.Context, dir string, timeout time.Duration) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("1"), 0); err != nil {
		return status.Errorf(codes.Internal, "freeze cgroup %s: %v", dir, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	wait := time.Millisecond
	for {
		frozen, err := cgroupFrozen(dir)
		if err != nil {
			return status.Errorf(codes.Internal, "freeze cgroup %s: %v", dir, err)
		}
		if frozen {
			return nil
		}
		select {
		case <-ctx.Done():
			if ctx.Err() == context.DeadlineExceeded {
				return status.Errorf(codes.DeadlineExceeded, "freeze cgroup %s: not frozen after %s", dir, timeout)
			}
			return status.FromContextError(ctx.Err()).Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// thawCgroup writes cgroup.freeze=0. Tasks resume right away; there is
// nothing to wait for.
func thawCgroup(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0); err != nil {
		return fmt.Errorf("thaw cgroup %s: %w", dir, err)
	}
	return nil
}

// cgroupFrozen reads the "frozen" key of cgroup.events.
func cgroupFrozen(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, _ := bytes.Cut(sc.Bytes(), []byte(" ")); string(k) == "frozen" {
			return string(v) == "1", nil
		}
	}
	return false, fmt.Errorf("%s: no frozen key", filepath.Join(dir, "cgroup.events"))
}
