package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/agenttest"
	"github.com/sailbox/sailbox/internal/testcap"
)

func TestIngressCLIValidation(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"ingress", "set", "--device", "x", "5432/tcp"}, "error: InvalidArgument: ingress entry 0 (5432/tcp): port 5432 (PostgreSQL)"},
		{[]string{"ingress", "set", "--device", "x", "8080", "8080"}, "error: InvalidArgument:"},
		{[]string{"ingress", "set", "--device", "x", "10000"}, "error: InvalidArgument:"},
		{[]string{"ingress", "set", "--device", "x", "22"}, "error: InvalidArgument:"},
		{[]string{"ingress", "set", "--device", "x", "2222/tcp=10.0.0.1/8"}, "host bits set"},
		{[]string{"ingress", "set", "--device", "x", "--max-raw-tcp", "1", "2222/tcp", "2223/tcp"}, "error: ResourceExhausted:"},
		{[]string{"ingress", "set", "8080"}, "error: InvalidArgument: ingress set: --device is required"},
		{[]string{"ingress", "bogus", "--device", "x"}, "error: InvalidArgument: ingress: unknown verb"},
	}
	for _, c := range cases {
		r := cli(t, nil, c.args...)
		if r.code != 125 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: exit %d stderr %q, want 125 and %q", c.args, r.code, r.stderr, c.want)
		}
	}
}

// TestIngressCLIProgramsFilter runs set, list and clear on a veth inside a
// network namespace the test creates (never on the host's own devices).
func TestIngressCLIProgramsFilter(t *testing.T) {
	testcap.Root(t)
	testcap.Command(t, "ip")
	testcap.Command(t, "nsenter")
	ns := fmt.Sprintf("sbcli%d", time.Now().UnixNano()%1e9)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		testcap.Missing(t, fmt.Sprintf("cannot create a network namespace: %v %s", err, out))
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "add", "sbh0", "type", "veth", "peer", "name", "sbg0").CombinedOutput(); err != nil {
		t.Fatalf("veth: %v %s", err, out)
	}
	exec.Command("ip", "-n", ns, "link", "set", "sbh0", "up").Run()
	run := func(args ...string) result {
		cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns, agenttest.Supervisor(t)}, args...)...)
		cmd.Env = agenttest.Env()
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		r := result{stdout: out.String(), stderr: errb.String()}
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		}
		return r
	}
	t.Cleanup(func() { run("ingress", "clear", "--device", "sbh0") })
	if r := run("ingress", "set", "--device", "sbh0", "8080", "5432/tcp=10.0.0.0/8,2001:db8::/32"); r.code != 0 {
		t.Fatalf("set: %+v", r)
	}
	r := run("ingress", "list", "--device", "sbh0")
	if r.code != 0 || !strings.Contains(r.stdout, "5432") || !strings.Contains(r.stdout, "10.0.0.0/8") || !strings.Contains(r.stdout, "2001:db8::/32") {
		t.Fatalf("list: %+v", r)
	}
	if r := run("ingress", "clear", "--device", "sbh0"); r.code != 0 {
		t.Fatalf("clear: %+v", r)
	}
	if r := run("ingress", "list", "--device", "sbh0"); r.code != 125 || !strings.Contains(r.stderr, "NotFound") {
		t.Fatalf("list after clear: %+v", r)
	}
	if _, err := os.Stat("/sys/fs/bpf/sailbox/sbh0"); err == nil {
		t.Fatal("pins left behind after clear")
	}
}
