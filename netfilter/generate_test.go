package netfilter

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox/sailbox/internal/testcap"
)

// TestGeneratedObjectUpToDate rebuilds the BPF object with the
// //go:generate line of gen.go into a temporary directory and compares it
// with the committed one: editing bpf/ingress.c without `make generate`
// fails here.
func TestGeneratedObjectUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles C")
	}
	testcap.Command(t, "clang")
	testcap.Command(t, "llvm-strip")
	goBin := testcap.Command(t, "go")
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go "); ok {
			args = strings.Fields(rest)
		}
	}
	if len(args) == 0 {
		t.Fatal("no //go:generate line in gen.go")
	}
	out := t.TempDir()
	// -output-dir goes before the positional arguments.
	args = append([]string{args[0], args[1], "-output-dir", out}, args[2:]...)
	cmd := exec.Command(goBin, args...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=netfilter", "GOFILE=gen.go")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	for _, name := range []string{"ingress_bpfel.o", "ingress_bpfel.go"} {
		want, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make generate` and commit it", name)
		}
	}
}
