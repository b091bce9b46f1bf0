// Package ids defines the format of the names the host gives to execs and
// sandboxes: 1-128 characters of [A-Za-z0-9._-]. Both sides check it, so it
// lives with the protocol.
package ids

import (
	"crypto/rand"
	"encoding/hex"
)

// MaxLen is the longest valid id.
const MaxLen = 128

// Valid reports whether id is 1-128 characters of [A-Za-z0-9._-]. (Not a
// regexp: compiling one with {1,128} costs half a millisecond at the start of
// every binary that links this package.)
func Valid(id string) bool {
	if len(id) == 0 || len(id) > MaxLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// NewExecID returns a random exec id: "x" and 24 hex digits.
func NewExecID() string {
	var b [12]byte
	rand.Read(b[:])
	return "x" + hex.EncodeToString(b[:])
}
