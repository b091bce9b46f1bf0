package supervisor

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
)

// kill -9 of the agent and a new agent on the same address: the daemon
// reconnects by itself, marks the execs the new agent does not know as
// lost, and new execs work.
func TestAgentRestart(t *testing.T) {
	a := agenttest.Start(t)
	d := startDaemon(t)
	c := newAPIClient(t, d.API)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	call := func(f func(api supervisorv1.SupervisorClient) error) {
		t.Helper()
		if err := c.do(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	call(func(api supervisorv1.SupervisorClient) error {
		_, err := api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: "sb", Agent: a.Addr})
		return err
	})
	start := func(id, cmd string) *supervisorv1.StartExecResponse {
		t.Helper()
		var resp *supervisorv1.StartExecResponse
		call(func(api supervisorv1.SupervisorClient) (err error) {
			resp, err = api.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: "sb", Request: &agentv1.StartRequest{Id: id, Command: cmd}})
			return err
		})
		return resp
	}
	wait := func(id string) *supervisorv1.ExecRecord {
		t.Helper()
		var r *supervisorv1.ExecRecord
		call(func(api supervisorv1.SupervisorClient) (err error) {
			r, err = api.WaitExec(ctx, &supervisorv1.ExecRef{Sandbox: "sb", Id: id})
			return err
		})
		return r
	}
	start("done-before", "echo fine")
	if r := wait("done-before"); r.State != supervisorv1.ExecState_EXEC_STATE_EXITED {
		t.Fatalf("done-before: %v", r)
	}
	for i := range 5 {
		start(fmt.Sprintf("long%d", i), "echo started; sleep 5")
	}
	time.Sleep(200 * time.Millisecond)

	a.KillHard()
	a.Restart(t) // returns once the new agent answers its own ping
	restarted := time.Now()

	// Lost execs are marked, and a new exec works, quickly.
	for i := range 5 {
		r := wait(fmt.Sprintf("long%d", i))
		if r.State != supervisorv1.ExecState_EXEC_STATE_LOST || r.Reason == "" {
			t.Fatalf("long%d: %v", i, r)
		}
	}
	lostAfter := time.Since(restarted)
	start("after", "echo after")
	r := wait("after")
	newExecAfter := time.Since(restarted)
	if r.State != supervisorv1.ExecState_EXEC_STATE_EXITED {
		t.Fatalf("after: %v", r)
	}
	t.Logf("after the agent restart: execs marked lost in %v, a new exec finished in %v", lostAfter, newExecAfter)
	if lostAfter > time.Second {
		t.Errorf("the supervisor needed %v (> 1s) to reconnect and mark the lost execs", lostAfter)
	}
	// The finished exec's result is untouched.
	if r := wait("done-before"); r.State != supervisorv1.ExecState_EXEC_STATE_EXITED {
		t.Fatalf("done-before changed: %v", r)
	}
	var sbs *supervisorv1.ListSandboxesResponse
	call(func(api supervisorv1.SupervisorClient) (err error) {
		sbs, err = api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{})
		return err
	})
	if len(sbs.Sandboxes) != 1 || !sbs.Sandboxes[0].Connected {
		t.Fatalf("sandboxes: %v", sbs.Sandboxes)
	}
}
