package rootfs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Mirror is the Debian archive the host's apt uses, found in its sources.
type Mirror struct {
	Archive  string   // e.g. http://deb.debian.org/debian (the suite itself)
	Updates  bool     // the host also uses <suite>-updates from Archive
	Security string   // e.g. http://deb.debian.org/debian-security ("" if none)
	SignedBy string   // keyring of the archive entry, if any
	Sources  []string // files read, for messages
}

type aptSource struct {
	uri, signedBy string
	suites        []string
}

// HostMirror reads /etc/apt/sources.list and /etc/apt/sources.list.d/*.list
// and *.sources (the files apt itself reads) and returns the entry for
// suite: the builder downloads from the same mirror as the host's apt.
func HostMirror(suite string) (Mirror, error) {
	return mirrorFrom("/etc/apt", suite)
}

func mirrorFrom(etcApt, suite string) (Mirror, error) {
	var srcs []aptSource
	var files []string
	read := func(p string, deb822 bool) {
		f, err := os.Open(p)
		if err != nil {
			return
		}
		defer f.Close()
		files = append(files, p)
		if deb822 {
			srcs = append(srcs, parseDeb822(f)...)
		} else {
			srcs = append(srcs, parseOneLine(f)...)
		}
	}
	read(filepath.Join(etcApt, "sources.list"), false)
	parts, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", "*"))
	slices.Sort(parts)
	for _, p := range parts {
		switch {
		case strings.HasSuffix(p, ".list"):
			read(p, false)
		case strings.HasSuffix(p, ".sources"):
			read(p, true)
		}
	}
	m := Mirror{Sources: files}
	for _, s := range srcs {
		for _, su := range s.suites {
			switch su {
			case suite:
				if m.Archive == "" {
					m.Archive, m.SignedBy = s.uri, s.signedBy
				}
			case suite + "-security":
				if m.Security == "" {
					m.Security = s.uri
				}
			}
		}
	}
	if m.Archive == "" {
		return m, fmt.Errorf("no apt source for Debian %s in %s", suite, strings.Join(files, ", "))
	}
	for _, s := range srcs {
		if s.uri == m.Archive && slices.Contains(s.suites, suite+"-updates") {
			m.Updates = true
		}
	}
	return m, nil
}

// parseOneLine reads "deb [options] URI suite components..." lines.
func parseOneLine(f *os.File) []aptSource {
	var out []aptSource
	s := bufio.NewScanner(f)
	for s.Scan() {
		line, _, _ := strings.Cut(s.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		var src aptSource
		rest := fields[1:]
		if strings.HasPrefix(rest[0], "[") {
			// Options run up to the field ending in "]".
			for len(rest) > 0 {
				opt := strings.Trim(rest[0], "[]")
				if v, ok := strings.CutPrefix(opt, "signed-by="); ok {
					src.signedBy = v
				}
				end := strings.HasSuffix(rest[0], "]")
				rest = rest[1:]
				if end {
					break
				}
			}
		}
		if len(rest) < 2 {
			continue
		}
		src.uri = strings.TrimSuffix(rest[0], "/")
		src.suites = []string{rest[1]}
		out = append(out, src)
	}
	return out
}

// parseDeb822 reads the stanzas of a .sources file.
func parseDeb822(f *os.File) []aptSource {
	var out []aptSource
	fields := map[string]string{}
	flush := func() {
		defer clear(fields)
		if fields["types"] == "" || !slices.Contains(strings.Fields(fields["types"]), "deb") {
			return
		}
		if strings.EqualFold(fields["enabled"], "no") {
			return
		}
		for _, uri := range strings.Fields(fields["uris"]) {
			out = append(out, aptSource{uri: strings.TrimSuffix(uri, "/"), signedBy: fields["signed-by"], suites: strings.Fields(fields["suites"])})
		}
	}
	s := bufio.NewScanner(f)
	var last string
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" { // continuation (e.g. an inline key)
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = strings.ToLower(strings.TrimSpace(k))
		fields[last] = strings.TrimSpace(v)
	}
	flush()
	return out
}

// sourcesList is the image's /etc/apt/sources.list.
func (m Mirror) sourcesList(suite string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "deb %s %s main\n", m.Archive, suite)
	if m.Updates {
		fmt.Fprintf(&b, "deb %s %s-updates main\n", m.Archive, suite)
	}
	if m.Security != "" {
		fmt.Fprintf(&b, "deb %s %s-security main\n", m.Security, suite)
	}
	return b.String()
}
