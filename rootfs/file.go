package rootfs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The JSON file format of a definition (see examples/demo.json):
//
//	{
//	  "base": "debian_arm64",
//	  "steps": [
//	    {"apt_install": ["curl"]},
//	    {"pip_install": ["requests==2.31.0"]},
//	    {"run_commands": ["echo hello > /etc/motd"]},
//	    {"env": {"APP_ENV": "demo"}},
//	    {"build": {"context": "./app", "dest": "/app", "run": ["make"]}}
//	  ]
//	}
//
// Each step is an object with exactly one key, its kind. A build context is
// relative to the file's directory.

type fileDef struct {
	Base  string            `json:"base"`
	Steps []json.RawMessage `json:"steps"`
}

type fileBuild struct {
	Context string   `json:"context"`
	Dest    string   `json:"dest"`
	Run     []string `json:"run,omitempty"`
}

// LoadFile reads a definition file.
func LoadFile(name string) (Image, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return Image{}, status.Errorf(codes.NotFound, "image definition %s: %v", name, err)
	}
	dir, _ := filepath.Abs(filepath.Dir(name))
	im, err := Parse(b, dir)
	if err != nil {
		if s, ok := status.FromError(err); ok {
			return Image{}, status.Errorf(s.Code(), "%s: %s", name, s.Message())
		}
		return Image{}, err
	}
	return im, nil
}

// Parse decodes a definition from JSON; contextDir anchors relative build
// contexts. Unknown fields and step kinds are InvalidArgument naming the step.
func Parse(b []byte, contextDir string) (Image, error) {
	var f fileDef
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return Image{}, status.Errorf(codes.InvalidArgument, "image definition: %v", err)
	}
	if f.Base == "" {
		return Image{}, status.Errorf(codes.InvalidArgument, "image definition: no base")
	}
	im := New(f.Base)
	for i, raw := range f.Steps {
		n := i + 1
		var one map[string]json.RawMessage
		if err := json.Unmarshal(raw, &one); err != nil || len(one) != 1 {
			return Image{}, status.Errorf(codes.InvalidArgument, "step %d: want an object with exactly one key (the step kind)", n)
		}
		for kind, v := range one {
			strict := func(dst any) error {
				d := json.NewDecoder(bytes.NewReader(v))
				d.DisallowUnknownFields()
				if err := d.Decode(dst); err != nil {
					return status.Errorf(codes.InvalidArgument, "step %d (%s): %v", n, kind, err)
				}
				return nil
			}
			switch StepKind(kind) {
			case KindAptInstall, KindPipInstall, KindRunCommands:
				var list []string
				if err := strict(&list); err != nil {
					return Image{}, err
				}
				switch StepKind(kind) {
				case KindAptInstall:
					im = im.AptInstall(list...)
				case KindPipInstall:
					im = im.PipInstall(list...)
				default:
					im = im.RunCommands(list...)
				}
			case KindEnv:
				var m map[string]string
				if err := strict(&m); err != nil {
					return Image{}, err
				}
				im = im.Env(m)
			case KindBuild:
				var fb fileBuild
				if err := strict(&fb); err != nil {
					return Image{}, err
				}
				ctx := fb.Context
				if ctx != "" && !filepath.IsAbs(ctx) {
					ctx = filepath.Join(contextDir, ctx)
				}
				im = im.Build(ctx, fb.Dest, fb.Run...)
			default:
				return Image{}, status.Errorf(codes.InvalidArgument, "step %d: unknown step kind %q", n, kind)
			}
		}
	}
	return im, im.Err()
}

// MarshalJSON writes the definition in the file format (build contexts as
// the paths they were given).
func (im Image) MarshalJSON() ([]byte, error) {
	if im.err != nil {
		return nil, im.err
	}
	steps := make([]any, len(im.steps))
	for i, s := range im.steps {
		switch s.Kind {
		case KindAptInstall, KindPipInstall:
			steps[i] = map[string]any{string(s.Kind): s.Packages}
		case KindRunCommands:
			steps[i] = map[string]any{string(s.Kind): s.Commands}
		case KindEnv:
			steps[i] = map[string]any{string(s.Kind): s.Env}
		case KindBuild:
			steps[i] = map[string]any{string(s.Kind): fileBuild{Context: s.Context, Dest: s.Dest, Run: s.Commands}}
		default:
			return nil, fmt.Errorf("step %d: unknown kind %q", i+1, s.Kind)
		}
	}
	return json.Marshal(map[string]any{"base": im.base, "steps": steps})
}
