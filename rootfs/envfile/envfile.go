// Package envfile reads and writes an image's environment file,
// /etc/sailbox/env: the variables an image definition's env steps set, which
// imageinit applies to the guest agent and so to every exec.
//
// Format (one variable a line, UTF-8, no quoting, no expansion):
//
//	# comment lines and blank lines are ignored
//	KEY=VALUE
//
// KEY matches [A-Za-z_][A-Za-z0-9_]*; VALUE is everything after the first '='
// up to the end of the line (it may contain '=' and spaces, never a newline
// or NUL). A later line for the same key overrides an earlier one. It has no
// dependencies beyond the standard library so the static init can import it.
package envfile

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Path is where an image keeps its environment file.
const Path = "/etc/sailbox/env"

// ValidKey reports whether k is an acceptable variable name.
func ValidKey(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// CheckValue returns an error when v cannot be written on one line.
func CheckValue(v string) error {
	if strings.ContainsAny(v, "\n\r\x00") {
		return fmt.Errorf("value contains a newline or NUL")
	}
	return nil
}

// Var is one KEY=VALUE pair.
type Var struct{ Key, Value string }

// Parse reads an environment file. Duplicate keys keep the last value, in
// the position of their first appearance.
func Parse(r io.Reader) ([]Var, error) {
	var out []Var
	idx := map[string]int{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1<<20)
	for n := 1; s.Scan(); n++ {
		line := strings.TrimSuffix(s.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !ValidKey(k) {
			return nil, fmt.Errorf("env file line %d: want KEY=VALUE, got %q", n, line)
		}
		if i, dup := idx[k]; dup {
			out[i].Value = v
			continue
		}
		idx[k] = len(out)
		out = append(out, Var{k, v})
	}
	return out, s.Err()
}

// Format writes vars sorted by key, one KEY=VALUE line each.
func Format(vars map[string]string) ([]byte, error) {
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteString("# sailbox image environment (KEY=VALUE lines); applied by imageinit to the agent and every exec\n")
	for _, k := range keys {
		if !ValidKey(k) {
			return nil, fmt.Errorf("env key %q: not a valid variable name", k)
		}
		if err := CheckValue(vars[k]); err != nil {
			return nil, fmt.Errorf("env key %q: %v", k, err)
		}
		fmt.Fprintf(&b, "%s=%s\n", k, vars[k])
	}
	return b.Bytes(), nil
}

// Environ turns vars into os/exec's KEY=VALUE form.
func Environ(vars []Var) []string {
	out := make([]string, len(vars))
	for i, v := range vars {
		out[i] = v.Key + "=" + v.Value
	}
	return out
}
