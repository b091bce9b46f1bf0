package vmtest

import (
	"context"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/vm"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// BenchmarkBoot measures, per iteration, a bare-init boot (QEMU start to
// imageinit ready) and a full boot to the first exec's result (QEMU start to
// `uname -m` done through the hybrid vsock), as seconds metrics.
//
//	go test -run '^$' -bench Boot -benchtime 3x ./test/vm
func BenchmarkBoot(b *testing.B) {
	a := prepare(b)
	var bare, first time.Duration
	for i := 0; i < b.N; i++ {
		bare += bareBoot(b, a)
		first += bootToFirstExec(b, a)
	}
	b.ReportMetric(bare.Seconds()/float64(b.N), "bare-init-s")
	b.ReportMetric(first.Seconds()/float64(b.N), "first-exec-s")
	b.ReportMetric(0, "ns/op")
}

func bootToFirstExec(b *testing.B, a artefacts) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := vm.Start(ctx, vm.Config{Name: "bench", Dir: b.TempDir(), Kernel: a.kernel, Initramfs: a.withAgent, NewVsock: vm.DefaultVsock})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Kill()
	c, _ := agentclient.New(v.AgentAddr(), agentOpts)
	defer c.Close()
	r, err := run(ctx, c, &agentv1.StartRequest{Command: "uname -m"})
	if err != nil || r.stdout != "aarch64\n" {
		b.Fatalf("uname -m: %+v %v", r, err)
	}
	d := time.Since(v.Started())
	if clean, err := v.Shutdown(ctx, 20*time.Second); !clean {
		b.Fatalf("shutdown: %v", err)
	}
	return d
}
