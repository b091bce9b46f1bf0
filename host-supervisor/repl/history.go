package repl

import (
	"os"
	"path/filepath"
)

// DefaultHistoryFile is where the interactive history is kept:
// $XDG_STATE_HOME/sailbox/history, else ~/.local/state/sailbox/history
// (the XDG base directory spec's place for state such as history). "" when
// neither can be found.
func DefaultHistoryFile() string {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "sailbox", "history")
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" {
		return ""
	}
	return filepath.Join(home, ".local", "state", "sailbox", "history")
}

func dirOf(p string) string { return filepath.Dir(p) }
