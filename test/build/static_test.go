// Package build checks properties of the built binaries.
package build

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestArm64BinariesAreStatic builds the guest-side binaries the way `make
// build` does and checks they are static arm64 executables: no program
// interpreter (PT_INTERP), so they run in any root image.
func TestArm64BinariesAreStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: cross-compiles")
	}
	dir := t.TempDir()
	for _, cmd := range []string{"guest-agent", "imageinit"} {
		if _, err := os.Stat(filepath.Join("..", "..", cmd, "main.go")); err != nil {
			t.Logf("%s: no main package yet", cmd)
			continue
		}
		out := filepath.Join(dir, cmd)
		b := exec.Command("go", "build", "-trimpath", "-o", out, "./"+cmd)
		b.Dir = filepath.Join("..", "..")
		b.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=arm64")
		if msg, err := b.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", cmd, err, msg)
		}
		checkStatic(t, out, elf.EM_AARCH64)
		// The binaries `make build` left in bin/ must be static too.
		if _, err := os.Stat(filepath.Join("..", "..", "bin", "linux-arm64", cmd)); err == nil {
			checkStatic(t, filepath.Join("..", "..", "bin", "linux-arm64", cmd), elf.EM_AARCH64)
		}
	}
}

func checkStatic(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("%s: machine %v, want %v", path, f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s: has a program interpreter: not static", path)
		}
	}
	if f.Type != elf.ET_EXEC {
		t.Errorf("%s: ELF type %v, want a static executable (ET_EXEC)", path, f.Type)
	}
}
