package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// startAgent runs the real guest-agent with its spools on tmpfs, as in the
// guest (/run), when /dev/shm is one.
func startAgent(b testing.TB, extra ...string) *agenttest.Agent {
	b.Helper()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		dir, err := os.MkdirTemp("/dev/shm", "sailbox-bench-")
		if err == nil {
			b.Cleanup(func() { os.RemoveAll(dir) })
			extra = append([]string{"--state-dir", filepath.Join(dir, "state")}, extra...)
		}
	}
	return agenttest.Start(b, extra...)
}

// interleave runs each of fns n times, round-robin, and returns the
// durations per function: the machine is shared, so a baseline and its
// figure see the same background load.
func interleave(b testing.TB, n int, fns ...func() error) [][]time.Duration {
	b.Helper()
	out := make([][]time.Duration, len(fns))
	for range n {
		for i, f := range fns {
			start := time.Now()
			if err := f(); err != nil {
				b.Fatal(err)
			}
			out[i] = append(out[i], time.Since(start))
		}
	}
	return out
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// runExec runs a foreground exec and returns its final status.
func runExec(ctx context.Context, cl *agentclient.Client, req *agentv1.StartRequest, stdout, stderr io.Writer) (*agentv1.ExecStatus, error) {
	return cl.Run(ctx, req, stdout, stderr)
}
