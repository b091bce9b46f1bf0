package repl

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sailbox/sailbox/internal/agenttest"
)

func TestSplitWords(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
		open bool
	}{
		{"", nil, false},
		{"  ps  ", []string{"ps"}, false},
		{`exec echo "a b" 'c d' e\ f`, []string{"exec", "echo", "a b", "c d", "e f"}, false},
		{`read "/tmp/x y`, []string{"read", "/tmp/x y"}, true},
		{`a "q\"uote" 'it''s'`, []string{"a", `q"uote`, "its"}, false},
	} {
		ws, open := splitWords(tc.line)
		if got := texts(ws); !reflect.DeepEqual(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) || open != tc.open {
			t.Errorf("splitWords(%q) = %q open=%v; want %q open=%v", tc.line, got, open, tc.want, tc.open)
		}
	}
	// Spans cover the raw text: exec takes the rest of the line verbatim.
	line := `exec -b  echo "$HOME"  | tr a-z A-Z`
	ws, _ := splitWords(line)
	if got := line[ws[2].start:]; got != `echo "$HOME"  | tr a-z A-Z` {
		t.Errorf("rest of line from word 2 = %q", got)
	}
}

// agent starts a real agent whose freezing is confined to a scratch dir.
func agent(t *testing.T) (*agenttest.Agent, *Agent) {
	t.Helper()
	dir := t.TempDir()
	a := agenttest.Start(t, "--freeze-root", filepath.Join(dir, "freeze-root"), "--freeze-hooks", filepath.Join(dir, "hooks"))
	b, err := DialAgent(a.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}

// script runs a non-interactive session.
func script(t *testing.T, b Backend, lines ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), Config{Backend: b, In: strings.NewReader(strings.Join(lines, "\n") + "\n"), Out: &out, Err: &errb})
	return out.String(), errb.String(), code
}

func TestScriptRunsCommandsAndStopsAtFirstFailure(t *testing.T) {
	_, b := agent(t)
	out, errOut, code := script(t, b,
		"# a comment",
		"",
		`exec echo "hello  world"; echo err >&2`,
		"exec --env GREETING=hi --cwd / sh -c 'echo $GREETING; pwd'",
		"exec -b --id bg1 sleep 0.2; echo done-bg",
		"wait bg1",
		"logs bg1",
		"ps",
		"exec exit 3",
		"exec echo not-reached",
	)
	if code != 3 {
		t.Errorf("exit %d, want 3 (the failing exec's status)", code)
	}
	for _, want := range []string{"hello  world\n", "hi\n/\n", "bg1\n", "exec bg1: exit status 0\n", "done-bg\n", "ID ", "bg1 ", "exited"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "not-reached") {
		t.Errorf("ran past the first failure:\n%s", out)
	}
	if !strings.Contains(errOut, "err\n") || !strings.Contains(errOut, "[exit status 3]") {
		t.Errorf("stderr %q", errOut)
	}

	// Errors of the REPL or the agent: 125 with a one-line error naming the code.
	for _, tc := range []struct{ line, want string }{
		{"bogus", `error: InvalidArgument: unknown command "bogus" (type help)`},
		{"wait", "error: InvalidArgument: wait: want exactly one exec id, got 0 arguments (see: help wait)"},
		{"wait no-such-exec", "error: NotFound: "},
		{"exec", "error: InvalidArgument: exec: no command (see: help exec)"},
		{"exec --bogus true", "error: InvalidArgument: exec: flag provided but not defined: -bogus"},
		{"kill -s NOPE x", `error: InvalidArgument: unknown signal "NOPE"`},
		{"listen 0", "error: InvalidArgument: listen: port \"0\""},
		{`exec echo "unterminated`, "error: InvalidArgument: unterminated quote"},
		{"read /nonexistent/file", "error: NotFound: "},
		{"read /", "error: FailedPrecondition: "},
		{"shell", "error: FailedPrecondition: shell: needs a terminal"},
	} {
		out, errOut, code := script(t, b, tc.line, "exec echo not-reached")
		if code != ExitError || !strings.HasPrefix(errOut, tc.want) || strings.Count(errOut, "\n") != 1 || strings.Contains(out, "not-reached") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 125 and %q...", tc.line, code, out, errOut, tc.want)
		}
	}

	// A signal and a timeout map like the CLI's exit statuses.
	if _, errOut, code := script(t, b, "exec kill -9 $$"); code != 128+9 || !strings.Contains(errOut, "killed by signal 9 (KILL)") {
		t.Errorf("killed: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := script(t, b, "exec --timeout 0.2 sleep 5"); code != ExitTimedOut || !strings.Contains(errOut, "timed out") {
		t.Errorf("timeout: exit %d, stderr %q", code, errOut)
	}
	if _, _, code := script(t, b, "exec true", "exit 7", "exec echo no"); code != 7 {
		t.Errorf("exit 7: got %d", code)
	}
}

func TestScriptFilesListenFreezeInfo(t *testing.T) {
	_, b := agent(t)
	dir := t.TempDir()
	local := filepath.Join(dir, "in.bin")
	data := bytes.Repeat([]byte("0123456789\x00\xff"), 200000) // > 1 MiB: several chunks
	if err := os.WriteFile(local, data, 0o600); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(dir, "remote", "sub", "file.bin")
	back := filepath.Join(dir, "back.bin")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	out, errOut, code := script(t, b,
		"write "+remote+" --from "+local+" --mode 0640",
		"stat "+remote,
		"read "+remote+" --to "+back,
		fmt.Sprintf("listen %d --timeout 10s", port),
		"freeze --watchdog 30s",
		"info",
		"thaw",
		"thaw",
	)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	got, err := os.ReadFile(back)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("round trip: %d bytes back (err %v), want %d", len(got), err, len(data))
	}
	for _, want := range []string{
		fmt.Sprintf("wrote %s: %d bytes, mode 0640", remote, len(data)),
		"type      regular", fmt.Sprintf("size      %d", len(data)), "mode      0640",
		fmt.Sprintf("read %s: %d bytes to %s", remote, len(data), back),
		fmt.Sprintf("ready: port %d (tcp) bound at 127.0.0.1:%d", port, port),
		"frozen: (no filesystems)", "thaws by itself in 30s",
		"frozen     yes", "boot id ", "uptime ",
		"thawed after", "not frozen",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	// read without --to prints the file.
	os.WriteFile(filepath.Join(dir, "small"), []byte("small file\n"), 0o644)
	if out, _, code := script(t, b, "read "+filepath.Join(dir, "small")); code != 0 || out != "small file\n" {
		t.Errorf("read to screen: exit %d, %q", code, out)
	}
}

func TestCompletion(t *testing.T) {
	_, b := agent(t)
	s := newSession(Config{Backend: b, In: strings.NewReader(""), Out: &bytes.Buffer{}, Err: &bytes.Buffer{}})
	dir := t.TempDir()
	for _, p := range []string{"alpha.txt", "alps/", "beta", ".hidden"} {
		if strings.HasSuffix(p, "/") {
			os.Mkdir(filepath.Join(dir, p), 0o755)
		} else {
			os.WriteFile(filepath.Join(dir, p), nil, 0o644)
		}
	}
	if _, _, code := script(t, b, "exec -b --id job-one sleep 30", "exec -b --id job-two true"); code != 0 {
		t.Fatal("start background execs")
	}
	complete := func(line string) []string {
		cands, n := (&completer{s: s}).Do([]rune(line), len([]rune(line)))
		word := line[len(line)-n:]
		var out []string
		for _, c := range cands {
			out = append(out, word+string(c))
		}
		return out
	}
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"", nil}, // checked below: every command
		{"he", []string{"help "}},
		{"e", []string{"exec ", "exit "}},
		{"help fr", []string{"freeze "}},
		{"wait job-", []string{"job-one ", "job-two "}},
		{"kill -s TERM job-o", []string{"job-one "}},
		{"logs --f", []string{"--follow "}},
		{"stat " + dir + "/al", []string{dir + "/alpha.txt ", dir + "/alps/"}},
		{"read " + dir + "/", []string{dir + "/alpha.txt ", dir + "/alps/", dir + "/beta "}},
		{"read " + dir + "/.h", []string{dir + "/.hidden "}},
		{"exec ls " + dir + "/b", []string{dir + "/beta "}},
		{"exec ls bet", nil}, // not path-looking: no remote listing
		{"exec --cwd " + dir + "/a", []string{dir + "/alps/"}},
		{"write /x --from " + dir + "/alp", []string{dir + "/alpha.txt ", dir + "/alps/"}},
		{"exec --timeout ", nil},
	} {
		got := complete(tc.line)
		if tc.line == "" {
			if len(got) != len(s.commands) {
				t.Errorf("empty line: %d candidates, want all %d commands", len(got), len(s.commands))
			}
			continue
		}
		if !reflect.DeepEqual(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
			t.Errorf("complete %q = %q, want %q", tc.line, got, tc.want)
		}
	}
	// Completion's own execs are released.
	list, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range list {
		if strings.HasPrefix(st.Id, "complete-") {
			t.Errorf("completion left exec %s behind", st.Id)
		}
	}
}

func TestHelpCoversEveryCommand(t *testing.T) {
	_, b := agent(t)
	s := newSession(Config{Backend: b})
	for name, c := range s.commands {
		if c.summary == "" || c.example == "" {
			t.Errorf("%s: missing summary or example", name)
		}
		out, errOut, code := script(t, b, "help "+name)
		if code != 0 || !strings.Contains(out, "usage:   "+name) || !strings.Contains(out, "example: "+c.example) {
			t.Errorf("help %s: exit %d, %q %q", name, code, out, errOut)
		}
	}
	out, _, _ := script(t, b, "help")
	for name := range s.commands {
		if !strings.Contains(out, "  "+name+" ") {
			t.Errorf("help lacks %s:\n%s", name, out)
		}
	}
}
