//go:build !linux

package freeze

import (
	"context"
	"errors"

	"golang.org/x/sys/unix"
)

var errUnsupported = errors.New("freezing needs Linux")

type otherFS struct{}

func newFSOps() fsOps { return otherFS{} }

func (otherFS) syncfs(string) error              { return errUnsupported }
func (otherFS) freeze(string) (uint64, error)    { return 0, errUnsupported }
func (otherFS) thaw(string) (int, error)         { return 0, errUnsupported }
func (otherFS) dev(string) (uint64, error)       { return 0, errUnsupported }
func (otherFS) mkdev(major, minor uint32) uint64 { return uint64(major)<<32 | uint64(minor) }

type waitStarter struct{}

func (waitStarter) Start(func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	return 0, nil, errUnsupported
}

func runHookProcess(context.Context, Starter, string, string) (string, error) {
	return "", errUnsupported
}
