package protocol_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox/sailbox/internal/testcap"
)

// TestGeneratedCodeIsFresh regenerates every .pb.go into a temp dir and
// compares it with the committed files: editing a .proto without `make
// proto` fails here.
func TestGeneratedCodeIsFresh(t *testing.T) {
	testcap.Command(t, "protoc")
	out := t.TempDir()
	cmd := exec.Command("bash", "../scripts/gen-proto.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gen-proto: %v\n%s", err, b)
	}
	n := 0
	err := filepath.Walk(filepath.Join(out, "protocol"), func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || !strings.HasSuffix(p, ".pb.go") {
			return err
		}
		n++
		rel, _ := filepath.Rel(out, p)
		fresh, _ := os.ReadFile(p)
		committed, err := os.ReadFile(filepath.Join("..", rel))
		if err != nil {
			t.Errorf("%s: generated but not committed", rel)
			return nil
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s is stale: run `make proto`", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("nothing was generated")
	}
}
