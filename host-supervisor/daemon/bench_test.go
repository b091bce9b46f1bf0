package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/execstore"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
)

// BenchmarkStartWait is the daemon's own cost per durable exec (in
// process, without the API hop): StartExec + WaitExec of "echo hi", 32 at
// a time. test/supervisor compares the whole path with direct agent execs.
func BenchmarkStartWait(b *testing.B) {
	f := newFixture(b, nil)
	ctx := context.Background()
	var seq atomic.Int64
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ResetTimer()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				id := fmt.Sprintf("b%d", seq.Add(1))
				if _, err := f.d.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: "sb", Request: &agentv1.StartRequest{Id: id, Command: "echo hi"}}); err != nil {
					b.Error(err)
					return
				}
				r, err := f.d.WaitExec(ctx, "sb", id)
				if err != nil || r.State != execstore.Exited {
					b.Error(r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkAPIStartOutput is StartExec + a following ExecOutput over the
// ttrpc API on a unix socket (the CLI's path), in process for profiling.
func BenchmarkAPIStartOutput(b *testing.B) {
	b.Run("group", func(b *testing.B) { benchAPI(b, 0) })
	b.Run("batch-2ms", func(b *testing.B) { benchAPI(b, 2*time.Millisecond) })
}

func benchAPI(b *testing.B, delay time.Duration) {
	f := newFixture(b, func(c *Config) { c.BatchDelay = delay })
	sock := filepath.Join(b.TempDir(), "api.sock")
	ln, err := Listen("unix://" + sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.d.Serve(ctx, ln)
	nc, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	tc := ttrpc.NewClient(nc)
	defer tc.Close()
	api := supervisorv1.NewSupervisorClient(tc)
	var seq, left, startNs, outNs atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ResetTimer()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				id := fmt.Sprintf("b%d", seq.Add(1))
				t0 := time.Now()
				if _, err := api.StartExec(ctx, &supervisorv1.StartExecRequest{Sandbox: "sb", Request: &agentv1.StartRequest{Id: id, Command: "echo hi"}}); err != nil {
					b.Error(err)
					return
				}
				startNs.Add(int64(time.Since(t0)))
				t1 := time.Now()
				s, err := api.ExecOutput(ctx, &supervisorv1.ExecOutputRequest{Sandbox: "sb", Id: id, Follow: true})
				if err != nil {
					b.Error(err)
					return
				}
				for {
					c, err := s.Recv()
					if err != nil {
						b.Error(err)
						return
					}
					if c.Final != nil {
						break
					}
				}
				outNs.Add(int64(time.Since(t1)))
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(startNs.Load())/float64(b.N)/1e6, "start-ms")
	b.ReportMetric(float64(outNs.Load())/float64(b.N)/1e6, "output-ms")
}

// BenchmarkDirectStartOutput is the same work straight to the agent
// (Start, follow the output, Release): the baseline of BenchmarkAPIStartOutput.
func BenchmarkDirectStartOutput(b *testing.B) {
	f := newFixture(b, nil)
	cl := f.agent.Client(b)
	ctx := context.Background()
	var seq, left, startNs, outNs atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ResetTimer()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				id := fmt.Sprintf("b%d", seq.Add(1))
				t0 := time.Now()
				if _, err := cl.Start(ctx, &agentv1.StartRequest{Id: id, Command: "echo hi"}); err != nil {
					b.Error(err)
					return
				}
				startNs.Add(int64(time.Since(t0)))
				t1 := time.Now()
				if _, _, err := cl.CopyOutput(ctx, id, agentclient.Offsets{}, true, io.Discard, io.Discard); err != nil {
					b.Error(err)
					return
				}
				cl.Release(ctx, id)
				outNs.Add(int64(time.Since(t1)))
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(startNs.Load())/float64(b.N)/1e6, "start-ms")
	b.ReportMetric(float64(outNs.Load())/float64(b.N)/1e6, "output-ms")
}
