package execengine

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/sailbox/sailbox/protocol/ids"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Spec is what to run.
type Spec struct {
	ID        string
	Command   string   // shell command, run as /bin/sh -c Command
	Argv      []string // or a program and its arguments
	Cwd       string
	Env       []string // KEY=VALUE, added to the agent's environment
	Timeout   time.Duration
	KillGrace time.Duration
	Stdin     bool // keep stdin open for WriteStdin
	TTY       bool
	Rows      uint16
	Cols      uint16
	OutputCap uint64
}

// ValidID reports whether id is a valid exec id (see protocol/ids).
func ValidID(id string) bool { return ids.Valid(id) }

// NewID returns a random exec id.
func NewID() string { return ids.NewExecID() }

// Validate checks a spec without touching the system; it returns InvalidArgument errors naming the offending field.
func (s *Spec) Validate() error {
	if s.ID != "" && !ValidID(s.ID) {
		return status.Errorf(codes.InvalidArgument, "exec id %q: want 1-128 characters of [A-Za-z0-9._-]", s.ID)
	}
	switch {
	case s.Command != "" && len(s.Argv) > 0:
		return status.Error(codes.InvalidArgument, "give either a shell command or an argv, not both")
	case strings.TrimSpace(s.Command) == "" && len(s.Argv) == 0:
		return status.Error(codes.InvalidArgument, "empty command")
	case len(s.Argv) > 0 && s.Argv[0] == "":
		return status.Error(codes.InvalidArgument, "empty program name in argv")
	}
	if strings.ContainsRune(s.Command, 0) {
		return status.Error(codes.InvalidArgument, "command contains a NUL byte")
	}
	for _, a := range s.Argv {
		if strings.ContainsRune(a, 0) {
			return status.Errorf(codes.InvalidArgument, "argv entry %q contains a NUL byte", a)
		}
	}
	if s.Timeout < 0 {
		return status.Errorf(codes.InvalidArgument, "negative timeout %v", s.Timeout)
	}
	if s.KillGrace < 0 {
		return status.Errorf(codes.InvalidArgument, "negative kill grace %v", s.KillGrace)
	}
	for _, kv := range s.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.ContainsRune(kv, 0) {
			return status.Errorf(codes.InvalidArgument, "env entry %q: want KEY=VALUE", kv)
		}
	}
	return nil
}

// fingerprint identifies the request for idempotent starts: a retry with the
// same id and fingerprint returns the existing exec; a different one is a
// conflict.
func (s *Spec) fingerprint() [32]byte {
	h := sha256.New()
	str := func(v string) {
		binary.Write(h, binary.LittleEndian, uint64(len(v)))
		h.Write([]byte(v))
	}
	str(s.Command)
	binary.Write(h, binary.LittleEndian, uint64(len(s.Argv)))
	for _, a := range s.Argv {
		str(a)
	}
	str(s.Cwd)
	binary.Write(h, binary.LittleEndian, uint64(len(s.Env)))
	for _, e := range s.Env {
		str(e)
	}
	binary.Write(h, binary.LittleEndian, []int64{int64(s.Timeout), int64(s.KillGrace)})
	binary.Write(h, binary.LittleEndian, []bool{s.Stdin, s.TTY})
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// display renders the command for listings.
func (s *Spec) display() string {
	c := s.Command
	if c == "" {
		c = strings.Join(s.Argv, " ")
	}
	if len(c) > 200 {
		c = c[:200] + "…"
	}
	return c
}

func mergeEnv(base, add []string) []string {
	idx := make(map[string]int, len(base)+len(add))
	out := make([]string, 0, len(base)+len(add))
	for _, list := range [][]string{base, add} {
		for _, kv := range list {
			k, _, _ := strings.Cut(kv, "=")
			if i, ok := idx[k]; ok {
				out[i] = kv
				continue
			}
			idx[k] = len(out)
			out = append(out, kv)
		}
	}
	return out
}

func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	path := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			dir = "."
		}
		p := dir + "/" + file
		if isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH", file)
}
