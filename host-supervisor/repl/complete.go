package repl

import (
	"bytes"
	"context"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// completeTimeout bounds the agent calls behind one Tab press.
const completeTimeout = 2 * time.Second

// maxCandidates caps a completion list.
const maxCandidates = 200

// completer completes commands, flags, exec ids (from List) and remote paths
// (listed through the agent). It implements readline.AutoCompleter.
type completer struct{ s *session }

// Do returns the candidates' remaining parts for the word before pos, and
// the length of that word.
func (c *completer) Do(line []rune, pos int) ([][]rune, int) {
	head := string(line[:pos])
	cur, before := currentWord(head)
	if strings.ContainsAny(cur, `'"\`) {
		return nil, 0 // quoted words: leave them alone
	}
	cands := c.s.candidates(before, cur)
	out := make([][]rune, 0, len(cands))
	for _, cand := range cands {
		out = append(out, []rune(strings.TrimPrefix(cand, cur)))
	}
	return out, len([]rune(cur))
}

// currentWord splits a line before the cursor into the word being typed and
// the complete words before it.
func currentWord(head string) (string, []string) {
	ws, _ := splitWords(head)
	if len(ws) == 0 || ws[len(ws)-1].end < len(head) {
		return "", texts(ws) // the cursor is after a blank: a new word
	}
	last := ws[len(ws)-1]
	return head[last.start:], texts(ws[:len(ws)-1])
}

// candidates returns whole words that complete cur (with a trailing blank
// when the word is finished, none after a directory).
func (s *session) candidates(before []string, cur string) []string {
	if len(before) == 0 {
		var out []string
		for _, c := range s.sortedCommands() {
			if strings.HasPrefix(c.name, cur) {
				out = append(out, c.name+" ")
			}
		}
		return out
	}
	cmd, ok := s.commands[before[0]]
	if !ok {
		return nil
	}
	if strings.HasPrefix(cur, "-") {
		var out []string
		for _, f := range cmd.flags {
			if strings.HasPrefix(f, cur) {
				out = append(out, f+" ")
			}
		}
		return out
	}
	prev := before[len(before)-1]
	switch {
	case cmd.name == "help" && len(before) == 1:
		return s.candidates(nil, cur)
	case prev == "--cwd":
		return s.remotePaths(cur, true)
	case prev == "--from" || prev == "--to":
		return localPaths(cur)
	case strings.HasPrefix(prev, "-") && !strings.Contains(prev, "=") && takesValue(prev):
		return nil
	}
	switch cmd.args {
	case argExecID:
		return s.execIDs(cur)
	case argRemotePath:
		// In a command line only path-looking words are remote paths.
		if cmd.name == "exec" || cmd.name == "shell" {
			if !strings.ContainsAny(cur, "/~") && !strings.HasPrefix(cur, ".") {
				return nil
			}
		}
		return s.remotePaths(cur, false)
	}
	return nil
}

// takesValue reports whether a flag is followed by a value word.
func takesValue(flag string) bool {
	switch strings.TrimLeft(flag, "-") {
	case "cwd", "env", "timeout", "id", "s", "signal", "watchdog", "from", "to", "mode":
		return true
	}
	return false
}

func (s *session) execIDs(cur string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), completeTimeout)
	defer cancel()
	list, err := s.b.List(ctx)
	if err != nil {
		return nil
	}
	var out []string
	for _, st := range list {
		if strings.HasPrefix(st.Id, cur) {
			out = append(out, st.Id+" ")
		}
	}
	sort.Strings(out)
	return out
}

// DirLister is implemented by a Backend that can list a remote directory
// itself; names of directories end in "/". Without it the REPL runs ls in
// the sandbox.
type DirLister interface {
	ListDir(ctx context.Context, dir string) ([]string, error)
}

// remotePaths completes a path in the sandbox.
func (s *session) remotePaths(cur string, dirsOnly bool) []string {
	dir, base := path.Split(cur)
	ctx, cancel := context.WithTimeout(context.Background(), completeTimeout)
	defer cancel()
	names, err := s.listRemoteDir(ctx, dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, n := range names {
		isDir := strings.HasSuffix(n, "/")
		if !strings.HasPrefix(n, base) || (dirsOnly && !isDir) ||
			(strings.HasPrefix(n, ".") && !strings.HasPrefix(base, ".")) {
			continue
		}
		if !isDir {
			n += " "
		}
		out = append(out, dir+n)
		if len(out) == maxCandidates {
			break
		}
	}
	sort.Strings(out)
	return out
}

func (s *session) listRemoteDir(ctx context.Context, dir string) ([]string, error) {
	if l, ok := s.b.(DirLister); ok {
		return l.ListDir(ctx, dir)
	}
	if dir == "" {
		dir = "."
	}
	// ls -p marks directories with "/"; -A shows dot files but not . and ..
	id := "complete-" + newExecID()
	if _, err := s.b.Start(ctx, &agentv1.StartRequest{Id: id, Argv: []string{"ls", "-1Ap", "--", dir}}); err != nil {
		return nil, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), completeTimeout)
		s.b.Release(rctx, id)
		cancel()
	}()
	var out, errb bytes.Buffer
	if _, _, err := s.b.CopyOutput(ctx, id, agentclient.Offsets{}, true, &out, &errb); err != nil {
		return nil, err
	}
	var names []string
	for _, l := range strings.Split(out.String(), "\n") {
		if l != "" {
			names = append(names, l)
		}
	}
	return names, nil
}

// localPaths completes a path on this machine.
func localPaths(cur string) []string {
	dir, base := filepath.Split(cur)
	d := dir
	if d == "" {
		d = "."
	}
	ents, err := os.ReadDir(d)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, base) || (strings.HasPrefix(n, ".") && !strings.HasPrefix(base, ".")) {
			continue
		}
		if e.IsDir() {
			n += "/"
		} else {
			n += " "
		}
		out = append(out, dir+n)
		if len(out) == maxCandidates {
			break
		}
	}
	sort.Strings(out)
	return out
}
