package main

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"testing"
	"time"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// BenchmarkExecRoundTrip is item 1: a foreground exec whose result comes
// back, through the real agent process over a unix socket, against a local
// fork+exec+wait of the same program in the benchmark process, interleaved.
// argv runs /bin/true on both sides; shell runs `sh -c true` on both sides
// (the CLI's form). Metrics: medians and p90 in µs, and x-local, the ratio of
// the medians (target ≤ 1.3).
//
//	go test -run '^$' -bench ExecRoundTrip -benchtime 500x ./test/bench
func BenchmarkExecRoundTrip(b *testing.B) {
	a := startAgent(b)
	cl := a.Client(b)
	ctx := context.Background()
	for _, c := range []struct {
		name  string
		req   *agentv1.StartRequest
		local []string
	}{
		{"argv", &agentv1.StartRequest{Argv: []string{"/bin/true"}}, []string{"/bin/true"}},
		{"shell", &agentv1.StartRequest{Command: "true"}, []string{"/bin/sh", "-c", "true"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			remote := func() error {
				st, err := runExec(ctx, cl, c.req, io.Discard, io.Discard)
				if err == nil && (st.State != agentv1.ExecState_EXEC_STATE_EXITED || st.ExitCode != 0) {
					err = fmt.Errorf("exec %s: %v", st.Id, st)
				}
				return err
			}
			local := func() error { return exec.Command(c.local[0], c.local[1:]...).Run() }
			interleave(b, 20, local, remote) // warm up both paths
			b.ResetTimer()
			d := interleave(b, b.N, local, remote)
			b.StopTimer()
			reportPair(b, "agent", d[1], "local", d[0])
		})
	}
}

// reportPair reports the medians and p90 of a figure and its baseline in µs
// and the ratio of the medians as x-BASE.
func reportPair(b *testing.B, name string, fig []time.Duration, base string, bl []time.Duration) {
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	b.ReportMetric(us(median(fig)), name+"-us")
	b.ReportMetric(us(percentile(fig, 0.9)), name+"-p90-us")
	b.ReportMetric(us(median(bl)), base+"-us")
	b.ReportMetric(us(percentile(bl, 0.9)), base+"-p90-us")
	b.ReportMetric(float64(median(fig))/float64(median(bl)), "x-"+base)
}
