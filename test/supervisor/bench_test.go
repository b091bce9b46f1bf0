package supervisor

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
)

// BenchmarkDurableVsDirect: execs per second through the daemon (journalled
// and fsynced before the agent sees them, output stored, record final
// before the result is served) against the same execs sent straight to
// the agent (Start, follow the output, Release), 32 at a time, against
// one agent, in interleaved rounds of the same run.
//
//	go test -run '^$' -bench DurableVsDirect -benchtime 3x ./test/supervisor
func BenchmarkDurableVsDirect(b *testing.B) {
	const concurrency, perRound = 32, 400
	a := agenttest.Start(b)
	d := startDaemon(b)
	api, closeAPI := dialAPI(b, d.API)
	defer closeAPI()
	ctx := context.Background()
	if _, err := api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: "sb", Agent: a.Addr}); err != nil {
		b.Fatal(err)
	}
	cl, err := agentclient.New(a.Addr, agentclient.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	const cmd = "echo hi"
	var seq atomic.Int64
	direct := func() error {
		id := fmt.Sprintf("d%d", seq.Add(1))
		if _, err := cl.Start(ctx, &agentv1.StartRequest{Id: id, Command: cmd}); err != nil {
			return err
		}
		st, _, err := cl.CopyOutput(ctx, id, agentclient.Offsets{}, true, io.Discard, io.Discard)
		if err != nil {
			return err
		}
		if st.ExitCode != 0 {
			return fmt.Errorf("exec %s: exit %d", id, st.ExitCode)
		}
		return cl.Release(ctx, id)
	}
	durable := func() error {
		id := fmt.Sprintf("s%d", seq.Add(1))
		if _, err := api.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: "sb", Request: &agentv1.StartRequest{Id: id, Command: cmd}}); err != nil {
			return err
		}
		s, err := api.ExecOutput(ctx, &supervisorv1.ExecOutputRequest{Sandbox: "sb", Id: id, Follow: true})
		if err != nil {
			return err
		}
		for {
			c, err := s.Recv()
			if err != nil {
				return fmt.Errorf("exec %s: output: %w", id, err)
			}
			if c.Final != nil {
				if c.Final.State != supervisorv1.ExecState_EXEC_STATE_EXITED || c.Final.Stdout.Kept != 3 {
					return fmt.Errorf("exec %s: final %v", id, c.Final)
				}
				return nil
			}
		}
	}
	round := func(f func() error) time.Duration {
		var wg sync.WaitGroup
		var left atomic.Int64
		left.Store(perRound)
		began := time.Now()
		for range concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for left.Add(-1) >= 0 {
					if err := f(); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(began)
	}
	round(direct) // warm up both paths
	round(durable)
	b.ResetTimer()
	var tDirect, tDurable time.Duration
	for range b.N {
		tDirect += round(direct)
		tDurable += round(durable)
	}
	n := float64(b.N * perRound)
	directRate, durableRate := n/tDirect.Seconds(), n/tDurable.Seconds()
	b.ReportMetric(directRate, "direct-execs/s")
	b.ReportMetric(durableRate, "durable-execs/s")
	b.ReportMetric(100*durableRate/directRate, "durable-%-of-direct")
	b.ReportMetric(0, "ns/op")
}
