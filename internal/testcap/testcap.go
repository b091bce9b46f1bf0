// Package testcap gates tests on machine capabilities (root, network
// namespaces, eBPF, loop devices, QEMU). Outside CI a missing capability
// skips the test with a reason; under CI=true it fails the test, because CI
// is expected to provide every capability and a silent skip would hide a gap.
package testcap

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true).
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips (outside CI) or fails (under CI) the test because the
// capability named by what is not available.
func Missing(t testing.TB, what string) {
	t.Helper()
	if InCI() {
		t.Fatalf("required capability missing under CI=true: %s", what)
	}
	t.Skipf("skipping: %s (runs in CI)", what)
}

// Root requires the test to run as root.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root")
	}
}

// Command requires an executable on PATH and returns its path.
func Command(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, "needs "+name+" on PATH")
	}
	return p
}
