package vmtest

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/host-supervisor/vm"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// BenchmarkBoot measures, per iteration, a bare-init boot (QEMU start to
// imageinit ready) and a full boot to the first exec's result (QEMU start to
// `uname -m` done through the hybrid vsock), as seconds metrics, with QEMU's
// CPU seconds beside them (steadier than wall time on a shared host; the
// bare figure covers the whole boot and power-off).
//
//	go test -run '^$' -bench Boot -benchtime 3x ./test/vm
func BenchmarkBoot(b *testing.B) {
	a := prepare(b)
	var bare, bareCPU, first, firstCPU time.Duration
	for i := 0; i < b.N; i++ {
		d, c := bareBoot(b, a)
		bare, bareCPU = bare+d, bareCPU+c
		d, c = bootToFirstExec(b, a)
		first, firstCPU = first+d, firstCPU+c
	}
	n := float64(b.N)
	b.ReportMetric(bare.Seconds()/n, "bare-init-s")
	b.ReportMetric(bareCPU.Seconds()/n, "bare-init-cpu-s")
	b.ReportMetric(first.Seconds()/n, "first-exec-s")
	b.ReportMetric(firstCPU.Seconds()/n, "first-exec-cpu-s")
	b.ReportMetric(0, "ns/op")
}

// bootToFirstExec returns the wall time from QEMU's start to the first
// exec's result, and QEMU's CPU time by then.
func bootToFirstExec(b *testing.B, a artefacts) (time.Duration, time.Duration) {
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
	d, cpu := time.Since(v.Started()), v.CPUTime()
	if clean, err := v.Shutdown(ctx, 20*time.Second); !clean {
		b.Fatalf("shutdown: %v\nconsole:\n%s", err, v.ConsoleTail())
	}
	return d, cpu
}

// BenchmarkVMOutputStream moves 8 MiB guest -> host as an exec's stdout and
// reports two rates: exec-MB/s, the command writing it into the agent's
// spool (busybox and the agent on the emulated CPU), and copy-MB/s, the
// spooled output crossing ttrpc, AF_VSOCK in the TCG guest, the
// vhost-user-vsock backend and the hybrid socket. The second is the in-VM
// figure to set beside the backend's own benchmarks.
//
//	go test -run '^$' -bench VMOutputStream -benchtime 3x ./test/vm
func BenchmarkVMOutputStream(b *testing.B) {
	a := prepare(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	v, err := vm.Start(ctx, vm.Config{Name: "stream", Dir: b.TempDir(), Kernel: a.kernel, Initramfs: a.withAgent, NewVsock: vm.DefaultVsock})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Kill()
	c, _ := agentclient.New(v.AgentAddr(), agentOpts)
	defer c.Close()
	if _, err := run(ctx, c, &agentv1.StartRequest{Command: "true"}); err != nil {
		b.Fatal(err)
	}
	const size = 8 << 20
	var execT, copyT time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("stream-%d", i)
		t0 := time.Now()
		if _, err := c.Start(ctx, &agentv1.StartRequest{Id: id, Command: fmt.Sprintf("head -c %d /dev/zero", size), OutputCap: size}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Wait(ctx, id); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		_, off, err := c.CopyOutput(ctx, id, agentclient.Offsets{}, true, io.Discard, io.Discard)
		if err != nil || off.Stdout != size {
			b.Fatalf("copy: %+v %v", off, err)
		}
		execT += t1.Sub(t0)
		copyT += time.Since(t1)
		c.Release(ctx, id)
	}
	b.StopTimer()
	mb := float64(size) / 1e6 * float64(b.N)
	b.ReportMetric(mb/execT.Seconds(), "exec-MB/s")
	b.ReportMetric(mb/copyT.Seconds(), "copy-MB/s")
	v.Shutdown(ctx, 20*time.Second)
}
