package rootfs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sailbox/sailbox/internal/testcap"
)

func TestMirrorFromSources(t *testing.T) {
	etc := t.TempDir()
	os.MkdirAll(filepath.Join(etc, "sources.list.d"), 0o755)
	// deb822 as on this machine, plus one-line files and disabled ones.
	os.WriteFile(filepath.Join(etc, "sources.list.d", "debian.sources"), []byte(`Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
`), 0o644)
	os.WriteFile(filepath.Join(etc, "sources.list.d", "other.list.disabled-by-farm"), []byte("deb http://evil.example/debian bookworm main\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "sources.list.d", "x.list"), []byte("deb [arch=amd64 signed-by=/k.gpg] https://third.example/apt stable main\n"), 0o644)
	m, err := mirrorFrom(etc, "bookworm")
	if err != nil {
		t.Fatal(err)
	}
	if m.Archive != "http://mirror.example/debian" || !m.Updates || m.Security != "http://mirror.example/debian-security" {
		t.Fatalf("mirror = %+v", m)
	}
	want := "deb http://mirror.example/debian bookworm main\ndeb http://mirror.example/debian bookworm-updates main\ndeb http://mirror.example/debian-security bookworm-security main\n"
	if got := m.sourcesList("bookworm"); got != want {
		t.Fatalf("sources.list =\n%s\nwant\n%s", got, want)
	}

	one := t.TempDir()
	os.WriteFile(filepath.Join(one, "sources.list"), []byte("# comment\ndeb-src http://src.example/debian bookworm main\ndeb [signed-by=/a.gpg] http://one.example/debian bookworm main contrib # trailing\n"), 0o644)
	m, err = mirrorFrom(one, "bookworm")
	if err != nil || m.Archive != "http://one.example/debian" || m.SignedBy != "/a.gpg" || m.Updates || m.Security != "" {
		t.Fatalf("one-line mirror = %+v, %v", m, err)
	}
	if _, err := mirrorFrom(t.TempDir(), "bookworm"); err == nil {
		t.Fatal("no sources: no error")
	}
}

func TestHostMirror(t *testing.T) {
	m, err := HostMirror("bookworm")
	if err != nil {
		testcap.Missing(t, fmt.Sprintf("this host's apt has no bookworm source: %v", err))
	}
	if !strings.HasPrefix(m.Archive, "http") || len(m.Sources) == 0 {
		t.Fatalf("host mirror = %+v", m)
	}
	t.Logf("host mirror: %+v", m)
}
