package repl_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/sailbox/sailbox/internal/agenttest"
)

// expectTimeout bounds every wait for the screen; it is a hang guard, not a
// speed check.
const expectTimeout = 20 * time.Second

// term is the built host-supervisor running in a pty.
type term struct {
	t    *testing.T
	cmd  *exec.Cmd
	pty  *os.File
	mu   sync.Mutex
	buf  bytes.Buffer
	mark int // screen text before it has been matched already
	done chan struct{}
	code int
}

// startTerm runs host-supervisor ARGS in a 40×120 pty with env added to
// the test environment.
func startTerm(t *testing.T, env []string, args ...string) *term {
	t.Helper()
	cmd := exec.Command(agenttest.Supervisor(t), args...)
	cmd.Env = append(append(agenttest.Env(), "TERM=xterm"), env...)
	// Not in /tmp (a clone may be there): local then keeps its private /tmp.
	cmd.Dir = "/"
	f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 120})
	if err != nil {
		t.Fatal(err)
	}
	tm := &term{t: t, cmd: cmd, pty: f, done: make(chan struct{})}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := f.Read(b)
			tm.mu.Lock()
			tm.buf.Write(b[:n])
			tm.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		tm.code = 0
		if ee, ok := err.(*exec.ExitError); ok {
			tm.code = ee.ExitCode()
		} else if err != nil {
			tm.code = -1
		}
		close(tm.done)
	}()
	t.Cleanup(func() {
		select {
		case <-tm.done:
		default:
			cmd.Process.Kill()
			<-tm.done
		}
		f.Close()
		if t.Failed() {
			t.Logf("screen:\n%s", tm.screen())
		}
	})
	return tm
}

// screen is everything printed so far as a terminal shows it (the line
// editor redraws its line with \r, \b and erase sequences).
func (tm *term) screen() string {
	tm.mu.Lock()
	raw := tm.buf.String()
	tm.mu.Unlock()
	return render(raw)
}

// render interprets the control sequences a line editor uses: CR, BS, LF,
// ESC[nA/B/C/D (cursor moves), ESC[J and ESC[K (erase to the end); other
// sequences are dropped. No wrapping: the tests keep their lines short.
func render(raw string) string {
	lines := [][]rune{nil}
	row, col := 0, 0
	rs := []rune(raw)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case r == '\n':
			row++
			if row == len(lines) {
				lines = append(lines, nil)
			}
		case r == '\r':
			col = 0
		case r == '\b':
			col = max(0, col-1)
		case r == 0x1b && i+1 < len(rs) && rs[i+1] == '[':
			j := i + 2
			for j < len(rs) && (rs[j] >= '0' && rs[j] <= '9' || rs[j] == ';' || rs[j] == '?') {
				j++
			}
			if j >= len(rs) {
				i = j
				continue
			}
			n, err := strconv.Atoi(strings.Split(string(rs[i+2:j]), ";")[0])
			if err != nil || n == 0 {
				n = 1
			}
			switch rs[j] {
			case 'A':
				row = max(0, row-n)
			case 'B':
				row = min(len(lines)-1, row+n)
			case 'C':
				col += n
			case 'D':
				col = max(0, col-n)
			case 'J':
				if col < len(lines[row]) {
					lines[row] = lines[row][:col]
				}
				lines = lines[:row+1]
			case 'K':
				if col < len(lines[row]) {
					lines[row] = lines[row][:col]
				}
			}
			i = j
		case r == 0x1b && i+1 < len(rs):
			i++ // ESC ( B, ESC =, ...: one more rune at most matters not
			if rs[i] == '(' || rs[i] == ')' {
				i++
			}
		case r < 0x20 || r == 0x7f:
			// bell and other controls
		default:
			for len(lines[row]) < col {
				lines[row] = append(lines[row], ' ')
			}
			if col < len(lines[row]) {
				lines[row][col] = r
			} else {
				lines[row] = append(lines[row], r)
			}
			col++
		}
	}
	var b strings.Builder
	for i, l := range lines {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(string(l))
	}
	return b.String()
}

func (tm *term) send(s string) {
	tm.t.Helper()
	if _, err := tm.pty.WriteString(s); err != nil {
		tm.t.Fatalf("type %q: %v", s, err)
	}
}

// expect waits until the screen after the last match matches re, and
// returns the match.
func (tm *term) expect(re string) []string {
	tm.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(expectTimeout)
	for {
		s := tm.screen()
		if tm.mark > len(s) {
			tm.mark = len(s)
		}
		if loc := rx.FindStringSubmatchIndex(s[tm.mark:]); loc != nil {
			m := rx.FindStringSubmatch(s[tm.mark:])
			tm.mark += loc[1]
			// A redrawn line may overwrite trailing blanks (the prompt's).
			for tm.mark > 0 && s[tm.mark-1] == ' ' {
				tm.mark--
			}
			return m
		}
		if time.Now().After(deadline) {
			tm.t.Fatalf("screen never showed %q; after the last match:\n%s", re, s[tm.mark:])
		}
		select {
		case <-tm.done:
			if !rx.MatchString(tm.screen()[tm.mark:]) {
				time.Sleep(50 * time.Millisecond) // the last output may still be in the pty
				if !rx.MatchString(tm.screen()[tm.mark:]) {
					tm.t.Fatalf("exited (status %d) before the screen showed %q; after the last match:\n%s", tm.code, re, tm.screen()[tm.mark:])
				}
			}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// wait waits for the process to exit and returns its status.
func (tm *term) wait() int {
	tm.t.Helper()
	select {
	case <-tm.done:
		return tm.code
	case <-time.After(expectTimeout):
		tm.t.Fatalf("host-supervisor did not exit; screen:\n%s", tm.screen())
		return -1
	}
}

// proc is one process from /proc.
type proc struct {
	pid, ppid, sid int
	cmdline        string
}

func procs(t *testing.T) []proc {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(stat, ')')
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 4 || f[0] == "Z" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		sid, _ := strconv.Atoi(f[3])
		cl, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out = append(out, proc{pid: pid, ppid: ppid, sid: sid, cmdline: strings.TrimSpace(strings.ReplaceAll(string(cl), "\x00", " "))})
	}
	return out
}

// descendants returns the live processes below pid.
func descendants(t *testing.T, pid int) []proc {
	t.Helper()
	all := procs(t)
	in := map[int]bool{pid: true}
	var out []proc
	for changed := true; changed; {
		changed = false
		for _, p := range all {
			if in[p.ppid] && !in[p.pid] {
				in[p.pid] = true
				out = append(out, p)
				changed = true
			}
		}
	}
	return out
}

// waitFor polls cond until it holds (a hang guard of expectTimeout).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(expectTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func findProc(ps []proc, cmdline string) *proc {
	for i := range ps {
		if ps[i].cmdline == cmdline {
			return &ps[i]
		}
	}
	return nil
}

func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return !strings.HasPrefix(strings.TrimSpace(string(stat[i+1:])), "Z")
}

func stateEnv(t *testing.T) (string, []string) {
	dir := t.TempDir()
	return dir, []string{"HOME=" + dir, "XDG_STATE_HOME=" + filepath.Join(dir, "state")}
}
