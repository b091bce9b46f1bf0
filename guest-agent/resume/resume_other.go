//go:build !linux

package resume

import (
	"context"
	"errors"
	"time"
)

var errUnsupported = errors.New("needs Linux")

type SystemClock struct{}

func (SystemClock) Now() time.Time      { return time.Now() }
func (SystemClock) Set(time.Time) error { return errUnsupported }

type DevRandom struct{}

func (DevRandom) Add([]byte) error { return errUnsupported }
func (DevRandom) Reseed() error    { return errUnsupported }

type KernelHostname struct{}

func (KernelHostname) Hostname() (string, error) { return "", errUnsupported }
func (KernelHostname) SetHostname(string) error  { return errUnsupported }

type SockDiag struct{}

func (SockDiag) DropEstablished(context.Context, func(Conn) bool) (int, int, error) {
	return 0, 0, errUnsupported
}

type Netlink struct{}

func NewNetlink() (*Netlink, error) { return &Netlink{}, nil }

func (*Netlink) Close() {}

func (*Netlink) Configure(context.Context, Interface) (InterfaceReport, error) {
	return InterfaceReport{}, errUnsupported
}
