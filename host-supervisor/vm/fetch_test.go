package vm

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/testcap"
)

// TestFetch downloads (or reuses) the arm64 kernel and busybox-static.
func TestFetch(t *testing.T) {
	testcap.Command(t, "apt-get")
	testcap.Command(t, "dpkg-deb")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f := &Fetcher{}
	k, err := f.Kernel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s %s release %s", k.Package, k.Version, k.Release)
	fi, err := os.Stat(k.Image)
	if err != nil || fi.Size() < 10<<20 {
		t.Fatalf("kernel image %s: %v (size %d)", k.Image, err, fi.Size())
	}
	bb, err := f.Busybox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("busybox %s", bb)
	// Second call hits the cache and agrees.
	k2, err := f.Kernel(ctx)
	if err != nil || k2 != k {
		t.Fatalf("second fetch: %+v, %v; want %+v", k2, err, k)
	}
}
