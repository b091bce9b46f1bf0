package rootfs

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func mustDigest(t *testing.T, im Image) string {
	t.Helper()
	d, err := im.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestImmutability(t *testing.T) {
	base := DebianArm64().AptInstall("curl")
	before := base.Steps()
	d0 := mustDigest(t, base)

	// Two children of the same parent: neither may see the other's step,
	// even though the parent's slice could have spare capacity.
	a := base.RunCommands("echo a")
	b := base.RunCommands("echo b")
	if got := a.Steps()[1].Commands[0]; got != "echo a" {
		t.Fatalf("a's step = %q", got)
	}
	if got := b.Steps()[1].Commands[0]; got != "echo b" {
		t.Fatalf("b's step = %q", got)
	}
	if !reflect.DeepEqual(base.Steps(), before) || mustDigest(t, base) != d0 {
		t.Fatal("parent changed by a helper")
	}

	// The caller's slices and maps are copied, not kept.
	pkgs := []string{"git", "make"}
	env := map[string]string{"A": "1"}
	c := base.AptInstall(pkgs...).Env(env)
	dc := mustDigest(t, c)
	pkgs[0] = "vim"
	env["A"] = "2"
	env["B"] = "3"
	if mustDigest(t, c) != dc || c.Steps()[1].Packages[0] != "git" || c.Steps()[2].Env["A"] != "1" {
		t.Fatal("definition changed through the caller's slice or map")
	}

	// Steps() hands out copies.
	s := c.Steps()
	s[1].Packages[0] = "emacs"
	s[2].Env["A"] = "x"
	if c.Steps()[1].Packages[0] != "git" || c.Steps()[2].Env["A"] != "1" {
		t.Fatal("definition changed through Steps()")
	}
}

func TestDigests(t *testing.T) {
	mk := func() Image {
		return DebianArm64().AptInstall("curl").Env(map[string]string{"APP_ENV": "demo", "B": "x"})
	}
	if mustDigest(t, mk()) != mustDigest(t, mk()) {
		t.Fatal("equal definitions, different digests")
	}
	// Map order never matters.
	e1 := DebianArm64().Env(map[string]string{"A": "1", "B": "2"})
	e2 := DebianArm64().Env(map[string]string{"B": "2", "A": "1"})
	if mustDigest(t, e1) != mustDigest(t, e2) {
		t.Fatal("env digest depends on map order")
	}
	distinct := map[string]Image{
		"base arm64":   DebianArm64(),
		"base arm":     DebianArm(),
		"curl":         DebianArm64().AptInstall("curl"),
		"curl wget":    DebianArm64().AptInstall("curl", "wget"),
		"wget curl":    DebianArm64().AptInstall("wget", "curl"),
		"curl;wget":    DebianArm64().AptInstall("curl").AptInstall("wget"),
		"pip curl":     DebianArm64().PipInstall("curl"),
		"run ab":       DebianArm64().RunCommands("a b"),
		"run a,b":      DebianArm64().RunCommands("a", "b"),
		"env A=1":      DebianArm64().Env(map[string]string{"A": "1"}),
		"env A=1,B=":   DebianArm64().Env(map[string]string{"A": "1", "B": ""}),
		"reordered":    DebianArm64().Env(map[string]string{"A": "1"}).AptInstall("curl"),
		"curl then A1": DebianArm64().AptInstall("curl").Env(map[string]string{"A": "1"}),
	}
	seen := map[string]string{}
	for name, im := range distinct {
		d := mustDigest(t, im)
		if other, dup := seen[d]; dup {
			t.Errorf("%s and %s have the same digest", name, other)
		}
		seen[d] = name
	}

	// Each step chains on its parent: a definition's digests start with its
	// prefix's digests.
	p := DebianArm64().AptInstall("curl")
	q := p.Env(map[string]string{"A": "1"}).RunCommands("true")
	pd, _ := p.StepDigests()
	qd, _ := q.StepDigests()
	if len(qd) != 4 || !reflect.DeepEqual(qd[:2], pd) {
		t.Fatalf("prefix digests %v not a prefix of %v", pd, qd)
	}
}

func TestBuildContextDigest(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "app.py"), []byte("print(1)\n"), 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	os.Symlink("app.py", filepath.Join(dir, "link"))
	im := DebianArm64().Build(dir, "/app", "python3 app.py")
	d1 := mustDigest(t, im)
	// The host path is not part of the digest; the content is.
	dir2 := t.TempDir()
	if err := copyContext(dir, dir2, "/"); err != nil {
		t.Fatal(err)
	}
	if d2 := mustDigest(t, DebianArm64().Build(dir2, "/app", "python3 app.py")); d2 != d1 {
		t.Fatal("same content in another directory, different digest")
	}
	os.WriteFile(filepath.Join(dir, "app.py"), []byte("print(2)\n"), 0o644)
	if d3 := mustDigest(t, DebianArm64().Build(dir, "/app", "python3 app.py")); d3 == d1 {
		t.Fatal("changed content, same digest")
	}
	// The earlier definition keeps the digest of the content it saw.
	if mustDigest(t, im) != d1 {
		t.Fatal("definition's digest changed with the directory")
	}
}

func TestValidation(t *testing.T) {
	ctx := t.TempDir()
	cases := []struct {
		name string
		im   Image
		want string // substring of the message
	}{
		{"unknown base", New("ubuntu_x86"), `base "ubuntu_x86"`},
		{"empty apt name", DebianArm64().AptInstall("curl", ""), "step 1 (apt_install): empty package name"},
		{"no packages", DebianArm64().AptInstall(), "step 1 (apt_install): no packages"},
		{"apt semicolon", DebianArm64().AptInstall("curl; rm -rf /"), "step 1 (apt_install): package name"},
		{"apt dollar", DebianArm64().AptInstall("$(reboot)"), "step 1 (apt_install)"},
		{"apt backtick", DebianArm64().AptInstall("a`b`"), "step 1 (apt_install)"},
		{"apt option", DebianArm64().AptInstall("-oAPT::x=1"), "step 1 (apt_install)"},
		{"apt space", DebianArm64().AptInstall("curl wget"), "step 1 (apt_install)"},
		{"pip pipe", DebianArm64().AptInstall("curl").PipInstall("requests|sh"), "step 2 (pip_install)"},
		{"pip ampersand", DebianArm64().PipInstall("a&&b"), "step 1 (pip_install)"},
		{"pip empty", DebianArm64().PipInstall(""), "step 1 (pip_install): empty package name"},
		{"env key =", DebianArm64().AptInstall("x").RunCommands("true").Env(map[string]string{"A=B": "1"}), "step 3 (env): env key \"A=B\" contains '='"},
		{"env key empty", DebianArm64().Env(map[string]string{"": "1"}), "step 1 (env)"},
		{"env newline", DebianArm64().Env(map[string]string{"A": "1\n2"}), "step 1 (env)"},
		{"empty command", DebianArm64().RunCommands("true", " "), "step 1 (run_commands): command 2 is empty"},
		{"build relative dest", DebianArm64().Build(ctx, "app"), "step 1 (build): dest"},
		{"build missing ctx", DebianArm64().Build(filepath.Join(ctx, "nope"), "/app"), "step 1 (build): context"},
	}
	for _, c := range cases {
		err := c.im.Err()
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want InvalidArgument containing %q", c.name, err, c.want)
		}
		if _, derr := c.im.Digest(); derr == nil {
			t.Errorf("%s: Digest succeeded on an invalid definition", c.name)
		}
		// The first error sticks through later valid steps.
		if later := c.im.RunCommands("true"); later.Err() == nil {
			t.Errorf("%s: error lost by a later step", c.name)
		}
	}
	ok := DebianArm64().AptInstall("curl", "libc6:arm64", "python3=3.11.2-1+b1", "g++", "linux-image-arm64/bookworm-backports").
		PipInstall("requests==2.31.0", "numpy>=1.20,<2", "uvicorn[standard]", "Flask_Cors").
		Env(map[string]string{"PATH_X": "a=b; c", "_": ""})
	if err := ok.Err(); err != nil {
		t.Fatalf("valid definition rejected: %v", err)
	}
}

func TestFileFormat(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "app"), 0o755)
	os.WriteFile(filepath.Join(dir, "app", "main.sh"), []byte("echo hi\n"), 0o755)
	def := `{"base": "debian_arm64", "steps": [
		{"apt_install": ["curl"]},
		{"env": {"APP_ENV": "demo"}},
		{"run_commands": ["echo hi > /etc/motd"]},
		{"pip_install": ["requests"]},
		{"build": {"context": "app", "dest": "/app", "run": ["sh main.sh"]}}
	]}`
	file := filepath.Join(dir, "def.json")
	os.WriteFile(file, []byte(def), 0o644)
	im, err := LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	want := DebianArm64().AptInstall("curl").Env(map[string]string{"APP_ENV": "demo"}).
		RunCommands("echo hi > /etc/motd").PipInstall("requests").Build(filepath.Join(dir, "app"), "/app", "sh main.sh")
	if mustDigest(t, im) != mustDigest(t, want) {
		t.Fatal("file and Go API give different digests")
	}
	// Round trip through MarshalJSON.
	b, err := json.Marshal(im)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(b, dir)
	if err != nil {
		t.Fatal(err)
	}
	if mustDigest(t, back) != mustDigest(t, im) {
		t.Fatalf("round trip changed the digest: %s", b)
	}

	bad := map[string]string{
		`{"base": "debian_x"}`: `base "debian_x"`,
		`{"steps": []}`:        "no base",
		`{"base": "debian_arm64", "steps": [{"apt": ["x"]}]}`:                                      `step 1: unknown step kind "apt"`,
		`{"base": "debian_arm64", "steps": [{"env": {"A=B": "1"}}]}`:                               "step 1 (env)",
		`{"base": "debian_arm64", "steps": [{"a": [], "b": []}]}`:                                  "step 1: want an object",
		`{"base": "debian_arm64", "steps": [{"apt_install": "curl"}]}`:                             "step 1 (apt_install)",
		`{"base": "debian_arm64", "extra": 1}`:                                                     "unknown field",
		`{"base": "debian_arm64", "steps": [{"build": {"context": "app", "dest": "/a", "x": 1}}]}`: "step 1 (build)",
	}
	for in, want := range bad {
		_, err := Parse([]byte(in), dir)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%s) = %v, want InvalidArgument containing %q", in, err, want)
		}
	}
}

func TestExampleDemoParses(t *testing.T) {
	im, err := LoadFile("../examples/demo.json")
	if err != nil {
		t.Fatal(err)
	}
	if im.Base() != BaseDebianArm64 || len(im.Steps()) == 0 {
		t.Fatalf("demo: base %s, %d steps", im.Base(), len(im.Steps()))
	}
}
