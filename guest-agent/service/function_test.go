package service_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sailbox/sailbox/guest-agent/pyfunc"
	"github.com/sailbox/sailbox/guest-agent/service"
	"github.com/sailbox/sailbox/internal/testcap"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"golang.org/x/sys/unix"
)

func pickle(t *testing.T, expr string) []byte {
	t.Helper()
	out, err := exec.Command("python3", "-c", "import pickle, sys, operator; sys.stdout.buffer.write(pickle.dumps("+expr+"))").Output()
	if err != nil {
		t.Fatalf("pickle %s: %v", expr, err)
	}
	return out
}

// The service maps a result, an exception and a timeout to response fields.
func TestFunctionCallResponseFields(t *testing.T) {
	testcap.Command(t, "python3")
	// Not the agent's global reaper: it would also reap this test
	// package's os/exec children.
	svc := &service.Function{R: &pyfunc.Runner{Starter: waitPid{}}}
	ctx := context.Background()

	resp, err := svc.Call(ctx, &agentv1.FunctionCallRequest{Payload: pickle(t, "(operator.add, (2, 3), {})")})
	if err != nil || resp.Exception != nil || len(resp.Result) == 0 || resp.TimedOut || resp.DurationNs <= 0 {
		t.Fatalf("add: %+v %v", resp, err)
	}
	resp, err = svc.Call(ctx, &agentv1.FunctionCallRequest{
		Payload: pickle(t, "(exec, ('import os; print(os.getcwd(), os.environ[\"SB_X\"]); 1/0',), {})"),
		Cwd:     "/tmp", Env: []string{"SB_X=y"},
	})
	if err != nil || resp.Exception == nil || resp.Exception.Type != "ZeroDivisionError" || resp.Result != nil ||
		string(resp.Stdout) != "/tmp y\n" || !strings.Contains(resp.Exception.Traceback, "ZeroDivisionError: division by zero") {
		t.Fatalf("exception: %+v %v", resp, err)
	}
	start := time.Now()
	resp, err = svc.Call(ctx, &agentv1.FunctionCallRequest{Payload: pickle(t, "(__import__('time').sleep, (60,), {})"), TimeoutMs: 300})
	if err != nil || !resp.TimedOut || resp.Exception != nil || resp.Result != nil {
		t.Fatalf("timeout: %+v %v", resp, err)
	}
	t.Logf("timeout returned after %v", time.Since(start))
}

// waitPid waits for exactly the child it started.
type waitPid struct{}

func (waitPid) Start(start func() (int, error)) (int, <-chan unix.WaitStatus, error) {
	pid, err := start()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	go func() {
		var ws unix.WaitStatus
		for {
			if _, err := unix.Wait4(pid, &ws, 0, nil); err != unix.EINTR {
				break
			}
		}
		ch <- ws
	}()
	return pid, ch, nil
}
