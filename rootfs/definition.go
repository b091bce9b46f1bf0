package rootfs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sailbox/sailbox/rootfs/envfile"
)

// Base names a root image the steps start from.
type Base string

// The bases an image can start from.
const (
	BaseDebianArm64 Base = "debian_arm64" // Debian bookworm, arm64
	BaseDebianArm   Base = "debian_arm"   // Debian bookworm, armhf
)

// baseInfo is what the builder needs to know about a base.
type baseInfo struct {
	Suite     string // Debian suite
	DebArch   string // Debian architecture
	GoArch    string // GOARCH of the embedded binaries
	QEMU      string // qemu-user interpreter for building on another arch
	ELFMagic  string // binfmt_misc magic and mask (escaped as in /proc)
	ELFMask   string
	KernelPkg string // Debian metapackage of the VM kernel
	BinDir    string // subdirectory of bin/ with the static guest binaries
}

var bases = map[Base]baseInfo{
	BaseDebianArm64: {
		Suite: "bookworm", DebArch: "arm64", GoArch: "arm64", QEMU: "qemu-aarch64-static",
		ELFMagic:  `\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00`,
		ELFMask:   `\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff`,
		KernelPkg: "linux-image-arm64", BinDir: "linux-arm64",
	},
	BaseDebianArm: {
		Suite: "bookworm", DebArch: "armhf", GoArch: "arm", QEMU: "qemu-arm-static",
		ELFMagic:  `\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00`,
		ELFMask:   `\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff`,
		KernelPkg: "linux-image-armmp-lpae", BinDir: "linux-arm",
	},
}

// StepKind names what a step does.
type StepKind string

// The step kinds, spelled as in the JSON file format.
const (
	KindAptInstall  StepKind = "apt_install"
	KindPipInstall  StepKind = "pip_install"
	KindRunCommands StepKind = "run_commands"
	KindEnv         StepKind = "env"
	KindBuild       StepKind = "build"
)

// Step is one build step. Which fields matter depends on Kind.
type Step struct {
	Kind StepKind `json:"kind"`
	// Packages of apt_install and pip_install.
	Packages []string `json:"packages,omitempty"`
	// Commands of run_commands, and of build (run in Dest after the copy).
	// Each is a shell command, run as ["/bin/sh", "-c", cmd].
	Commands []string `json:"commands,omitempty"`
	// Env of env steps.
	Env map[string]string `json:"env,omitempty"`
	// Context is the host directory a build step copies into the image at
	// Dest; ContextDigest is the sha256 of its content when the step was
	// made (the digest covers the content, not the host path).
	Context       string `json:"context,omitempty"`
	Dest          string `json:"dest,omitempty"`
	ContextDigest string `json:"context_digest,omitempty"`
}

func (s Step) clone() Step {
	s.Packages = slices.Clone(s.Packages)
	s.Commands = slices.Clone(s.Commands)
	s.Env = maps.Clone(s.Env)
	return s
}

// Image is an immutable image definition: a base and ordered steps. Every
// helper returns a new Image and leaves its receiver unchanged. An invalid
// step is remembered and reported by Err, Digest and the builder, so
// definitions chain without an error check after every call.
type Image struct {
	base  Base
	steps []Step
	err   error
}

// New starts a definition from the named base (debian_arm64, debian_arm).
func New(base string) Image {
	b := Base(base)
	if _, ok := bases[b]; !ok {
		return Image{base: b, err: status.Errorf(codes.InvalidArgument, "base %q: unknown (want %s or %s)", base, BaseDebianArm64, BaseDebianArm)}
	}
	return Image{base: b}
}

// DebianArm64 is a Debian bookworm arm64 base.
func DebianArm64() Image { return New(string(BaseDebianArm64)) }

// DebianArm is a Debian bookworm armhf base.
func DebianArm() Image { return New(string(BaseDebianArm)) }

// Base returns the definition's base.
func (im Image) Base() Base { return im.base }

// Err returns the first invalid input of the definition, as an
// InvalidArgument status naming the step.
func (im Image) Err() error { return im.err }

// Steps returns a copy of the steps.
func (im Image) Steps() []Step {
	out := make([]Step, len(im.steps))
	for i, s := range im.steps {
		out[i] = s.clone()
	}
	return out
}

// with returns a new Image with s appended; the receiver's slice is never
// appended to in place, so definitions that share a prefix stay independent.
func (im Image) with(s Step) Image {
	steps := make([]Step, len(im.steps), len(im.steps)+1)
	copy(steps, im.steps)
	n := Image{base: im.base, steps: append(steps, s.clone()), err: im.err}
	if n.err == nil {
		if err := validateStep(len(n.steps), n.steps[len(n.steps)-1]); err != nil {
			n.err = err
		}
	}
	return n
}

// AptInstall installs Debian packages with apt-get (no recommends).
func (im Image) AptInstall(pkgs ...string) Image {
	return im.with(Step{Kind: KindAptInstall, Packages: pkgs})
}

// PipInstall installs Python packages with the image's python3 -m pip
// (python3-pip and python3-venv are added first when missing).
func (im Image) PipInstall(pkgs ...string) Image {
	return im.with(Step{Kind: KindPipInstall, Packages: pkgs})
}

// RunCommands runs each command with /bin/sh -c in the image, in order;
// the first failure fails the step.
func (im Image) RunCommands(cmds ...string) Image {
	return im.with(Step{Kind: KindRunCommands, Commands: cmds})
}

// Env sets environment variables for later steps and for the running image
// (written to /etc/sailbox/env, which imageinit applies to every exec).
func (im Image) Env(vars map[string]string) Image {
	return im.with(Step{Kind: KindEnv, Env: vars})
}

// Build copies the host directory contextDir into the image at dest (an
// absolute path, created when missing; files owned by root, modes kept),
// then runs cmds there with /bin/sh -c, like a Dockerfile's COPY + RUN.
// The step's digest covers the directory's content as it is now; a build
// fails if the content has changed since.
func (im Image) Build(contextDir, dest string, cmds ...string) Image {
	s := Step{Kind: KindBuild, Context: contextDir, Dest: dest, Commands: cmds}
	if im.err == nil && contextDir != "" {
		d, err := contextDigest(contextDir)
		if err != nil {
			n := im.with(s)
			if n.err == nil {
				n.err = status.Errorf(codes.InvalidArgument, "step %d (build): context %s: %v", len(n.steps), contextDir, err)
			}
			return n
		}
		s.ContextDigest = d
	}
	return im.with(s)
}

// aptName is a Debian package name, optionally with :arch and =version or
// /release. Nothing a shell would interpret.
var aptName = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?([=/][A-Za-z0-9.+~:-]+)?$`)

// pipReq is a pip requirement: a distribution name, optional [extras] and an
// optional version specifier. It is passed as one argv element (never to a
// shell), so <, > and = in the specifier are harmless.
var pipReq = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(\[[A-Za-z0-9._,-]+\])?([<>=!~]=?[A-Za-z0-9.*+!-]+(,[<>=!~]=?[A-Za-z0-9.*+!-]+)*)?$`)

func validateStep(n int, s Step) error {
	bad := func(format string, a ...any) error {
		return status.Errorf(codes.InvalidArgument, "step %d (%s): %s", n, s.Kind, fmt.Sprintf(format, a...))
	}
	switch s.Kind {
	case KindAptInstall, KindPipInstall:
		if len(s.Packages) == 0 {
			return bad("no packages")
		}
		re := aptName
		if s.Kind == KindPipInstall {
			re = pipReq
		}
		for _, p := range s.Packages {
			if p == "" {
				return bad("empty package name")
			}
			if !re.MatchString(p) {
				return bad("package name %q: not a valid name (no shell metacharacters, spaces or leading '-')", p)
			}
		}
	case KindRunCommands:
		if len(s.Commands) == 0 {
			return bad("no commands")
		}
		for i, c := range s.Commands {
			if strings.TrimSpace(c) == "" {
				return bad("command %d is empty", i+1)
			}
		}
	case KindEnv:
		if len(s.Env) == 0 {
			return bad("no variables")
		}
		for _, k := range slices.Sorted(maps.Keys(s.Env)) {
			if strings.Contains(k, "=") {
				return bad("env key %q contains '='", k)
			}
			if !envfile.ValidKey(k) {
				return bad("env key %q: not a variable name ([A-Za-z_][A-Za-z0-9_]*)", k)
			}
			if err := envfile.CheckValue(s.Env[k]); err != nil {
				return bad("env %s: %v", k, err)
			}
		}
	case KindBuild:
		if s.Context == "" {
			return bad("no context directory")
		}
		if !path.IsAbs(s.Dest) || path.Clean(s.Dest) != s.Dest {
			return bad("dest %q: want a clean absolute path", s.Dest)
		}
		for i, c := range s.Commands {
			if strings.TrimSpace(c) == "" {
				return bad("command %d is empty", i+1)
			}
		}
	default:
		return bad("unknown step kind")
	}
	return nil
}

// Digest is the definition's content digest (hex sha256): equal definitions
// have equal digests. It is the digest of the last step.
func (im Image) Digest() (string, error) {
	d, err := im.StepDigests()
	if err != nil {
		return "", err
	}
	return d[len(d)-1], nil
}

// StepDigests returns the chain of digests: element 0 is the base's, element
// i the digest after step i, each computed over its parent's digest and the
// step's canonical encoding. A build reuses the longest cached prefix.
func (im Image) StepDigests() ([]string, error) {
	if im.err != nil {
		return nil, im.err
	}
	info := bases[im.base]
	var e enc
	e.str("sailbox.image.v1", "base", string(im.base), info.Suite, info.DebArch, "minbase")
	out := []string{e.sum()}
	for _, s := range im.steps {
		e = enc{}
		e.str("sailbox.image.v1", "step", out[len(out)-1])
		s.encode(&e)
		out = append(out, e.sum())
	}
	return out, nil
}

// enc is the canonical encoding: every field is length-prefixed, so no two
// different step lists encode to the same bytes.
type enc struct{ b []byte }

func (e *enc) str(ss ...string) {
	for _, s := range ss {
		e.b = fmt.Appendf(e.b, "%d:%s,", len(s), s)
	}
}

func (e *enc) list(ss []string) {
	e.b = fmt.Appendf(e.b, "[%d]", len(ss))
	e.str(ss...)
}

func (e *enc) sum() string {
	h := sha256.Sum256(e.b)
	return hex.EncodeToString(h[:])
}

func (s Step) encode(e *enc) {
	e.str(string(s.Kind))
	switch s.Kind {
	case KindAptInstall, KindPipInstall:
		e.list(s.Packages)
	case KindRunCommands:
		e.list(s.Commands)
	case KindEnv:
		keys := make([]string, 0, len(s.Env))
		for k := range s.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		e.b = fmt.Appendf(e.b, "{%d}", len(keys))
		for _, k := range keys {
			e.str(k, s.Env[k])
		}
	case KindBuild:
		e.str(s.Dest, s.ContextDigest)
		e.list(s.Commands)
	}
}

// Describe is a one-line summary of a step for progress output.
func (s Step) Describe() string {
	switch s.Kind {
	case KindAptInstall, KindPipInstall:
		return string(s.Kind) + " " + strings.Join(s.Packages, " ")
	case KindRunCommands:
		return fmt.Sprintf("run_commands (%d)", len(s.Commands))
	case KindEnv:
		return "env " + strings.Join(slices.Sorted(maps.Keys(s.Env)), " ")
	case KindBuild:
		return fmt.Sprintf("build %s -> %s", s.Context, s.Dest)
	}
	return string(s.Kind)
}
