//go:build !linux

package pid1

import (
	"errors"
	"log/slog"
)

var errNotLinux = errors.New("imageinit runs only as PID 1 of a Linux VM")

// Run fails: imageinit is Linux's PID 1.
func Run(Options, *slog.Logger) error { return errNotLinux }

// SystemPoweroff fails outside Linux.
func SystemPoweroff() error { return errNotLinux }
