package supervisor

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/agenttest"
)

type cliResult struct {
	stdout, stderr string
	code           int
}

func runCLI(t *testing.T, extraEnv []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(agenttest.Supervisor(t), args...)
	cmd.Env = append(env(), extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := cliResult{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run host-supervisor %v: %v", args, err)
	}
	return r
}

// The README flow: serve, register a sandbox, exec through the daemon;
// kill -9 and restart the daemon and `wait ID` answers the same result.
func TestCLIThroughSupervisor(t *testing.T) {
	a := agenttest.Start(t)
	d := startDaemon(t)
	sup := []string{"--supervisor", d.API, "--sandbox", "local"}
	if r := runCLI(t, nil, "sandbox", "add", "--supervisor", d.API, "--id", "local", "--agent", a.Addr, "--label", "owner=test"); r.code != 0 || !strings.Contains(r.stdout, "local") {
		t.Fatalf("sandbox add: %+v", r)
	}
	r := runCLI(t, nil, append(append([]string{"exec"}, sup...), "--", "echo hi; echo err >&2; exit 3")...)
	if r.stdout != "hi\n" || r.stderr != "err\n" || r.code != 3 {
		t.Fatalf("exec: %+v", r)
	}
	// The environment names the target as well.
	r = runCLI(t, []string{"SAILBOX_SUPERVISOR=" + d.API, "SAILBOX_SANDBOX=local"}, "exec", "--", "echo from env")
	if r.stdout != "from env\n" || r.code != 0 {
		t.Fatalf("exec with env target: %+v", r)
	}
	r = runCLI(t, nil, append(append([]string{"exec"}, sup...), "--background", "--id", "job1", "--", "sleep 1; echo done; exit 7")...)
	if r.stdout != "job1\n" || r.code != 0 {
		t.Fatalf("exec --background: %+v", r)
	}
	for round := range 2 {
		d.KillHard()
		d.Start()
		r = runCLI(t, nil, append(append([]string{"wait"}, sup...), "job1")...)
		if r.code != 7 {
			t.Fatalf("round %d: wait after kill -9: %+v", round, r)
		}
		r = runCLI(t, nil, append(append([]string{"logs"}, sup...), "job1")...)
		if r.stdout != "done\n" || r.code != 0 {
			t.Fatalf("round %d: logs after kill -9: %+v", round, r)
		}
	}
	r = runCLI(t, nil, append([]string{"ps"}, sup...)...)
	if !strings.Contains(r.stdout, "job1") || r.code != 0 {
		t.Fatalf("ps: %+v", r)
	}

	// A foreground exec streams on through a kill -9 and restart of the
	// daemon: exact output (nothing lost, nothing doubled), right status.
	cmd := exec.Command(agenttest.Supervisor(t), append(append([]string{"exec"}, sup...),
		"--", "for i in $(seq 1 40); do echo line $i; echo e$i >&2; sleep 0.05; done; exit 4")...)
	cmd.Env = env()
	var fgOut, fgErr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &fgOut, &fgErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	d.KillHard()
	d.Start()
	err := cmd.Wait()
	var wantOut, wantErr strings.Builder
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&wantOut, "line %d\n", i)
		fmt.Fprintf(&wantErr, "e%d\n", i)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 4 || fgOut.String() != wantOut.String() || fgErr.String() != wantErr.String() {
		t.Fatalf("foreground exec across a daemon crash: %v\nstdout %q\nstderr %q", err, fgOut.String(), fgErr.String())
	}

	// A checkpoint, an exec after it, a restore: the exec is lost, not replayed.
	if r := runCLI(t, nil, "sandbox", "checkpointed", "--supervisor", d.API, "--id", "local", "--generation", "1"); r.code != 0 {
		t.Fatalf("checkpointed: %+v", r)
	}
	runCLI(t, nil, append(append([]string{"exec"}, sup...), "--background", "--id", "late", "--", "sleep 30")...)
	if r := runCLI(t, nil, "sandbox", "restore", "--supervisor", d.API, "--id", "local", "--generation", "1"); r.stdout != "lost late\n" {
		t.Fatalf("restore: %+v", r)
	}
	r = runCLI(t, nil, append(append([]string{"wait"}, sup...), "late")...)
	if r.code != 125 || !strings.HasPrefix(r.stderr, "error: Aborted: exec late lost: not replayed") {
		t.Fatalf("wait on a lost exec: %+v", r)
	}
	r = runCLI(t, nil, "sandbox", "execs", "--supervisor", d.API)
	for _, want := range []string{"job1", "exited", "late", "lost", "not replayed"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("sandbox execs lacks %q:\n%s", want, r.stdout)
		}
	}

	// Errors name what failed.
	r = runCLI(t, nil, "exec", "--supervisor", d.API, "--sandbox", "nope", "--", "true")
	if r.code != 125 || r.stderr != "error: NotFound: sandbox nope not found\n" {
		t.Fatalf("unknown sandbox: %+v", r)
	}
	r = runCLI(t, nil, "exec", "--supervisor", d.API, "--", "true")
	if r.code != 125 || !strings.HasPrefix(r.stderr, "error: InvalidArgument: --supervisor needs --sandbox") {
		t.Fatalf("no sandbox: %+v", r)
	}
	if r := runCLI(t, nil, "sandbox", "rm", "--supervisor", d.API, "--id", "local"); r.code != 0 {
		t.Fatalf("sandbox rm: %+v", r)
	}
	if r := runCLI(t, nil, "sandbox", "list", "--supervisor", d.API); strings.Contains(r.stdout, "local") {
		t.Fatalf("sandbox list after rm: %+v", r)
	}
}
