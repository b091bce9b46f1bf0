package freeze

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// hooks lists the executables in HooksDir in lexical order.
func (f *Freezer) hooks() ([]string, error) {
	if f.cfg.HooksDir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(f.cfg.HooksDir) // sorted by name
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // editor and package-manager leftovers
		}
		p := filepath.Join(f.cfg.HooksDir, e.Name())
		fi, err := os.Stat(p) // follow symlinks
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// runHook runs one hook with the phase ("freeze" or "thaw") as argument and
// the configured timeout.
func (f *Freezer) runHook(ctx context.Context, path, phase string) error {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.HookTimeout)
	defer cancel()
	out, err := runHookProcess(ctx, f.cfg.Starter, path, phase)
	f.log.Debug("hook ran", "hook", path, "phase", phase, "err", err, "output", out)
	return err
}

// thawHooks runs the thaw phase of hooks in reverse order. Failures are
// returned as warnings: the filesystems are already thawed.
func (f *Freezer) thawHooks(hooks []string) (ran, warnings []string) {
	for i := len(hooks) - 1; i >= 0; i-- {
		// Thaw hooks run even when the freeze request was cancelled.
		if err := f.runHook(context.Background(), hooks[i], "thaw"); err != nil {
			f.log.Warn("post-thaw hook failed", "hook", hooks[i], "err", err)
			warnings = append(warnings, err.Error())
		}
		ran = append(ran, hooks[i])
	}
	return ran, warnings
}
