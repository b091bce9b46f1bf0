//go:build !linux

package listener

import "errors"

// OpenFinder needs Linux: listeners are found through sock_diag or /proc/net.
func OpenFinder(src Source) (Finder, error) {
	return nil, errors.New("open listener finder: only Linux is supported")
}
