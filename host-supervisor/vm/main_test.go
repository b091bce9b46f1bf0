package vm

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

var (
	guestBinOnce sync.Once
	guestBinDir  string
	guestBinErr  error
)

// guestBinaries builds the static arm64 imageinit and guest-agent once per
// test binary and returns their directory.
func guestBinaries(t testing.TB) string {
	t.Helper()
	guestBinOnce.Do(func() {
		guestBinDir, guestBinErr = os.MkdirTemp("", "sailbox-vm-test-bin")
		if guestBinErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		for _, p := range []string{"imageinit", "guest-agent"} {
			if guestBinErr = BuildArm64(ctx, "github.com/sailbox/sailbox/"+p, filepath.Join(guestBinDir, p)); guestBinErr != nil {
				return
			}
		}
	})
	if guestBinErr != nil {
		t.Fatal(guestBinErr)
	}
	return guestBinDir
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if guestBinDir != "" {
		os.RemoveAll(guestBinDir)
	}
	os.Exit(code)
}
