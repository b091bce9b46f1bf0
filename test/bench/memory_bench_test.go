package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// procStatusKiB reads fields (VmRSS, VmHWM, ...) of /proc/PID/status in KiB.
func procStatusKiB(pid int) (map[string]float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.HasSuffix(v, " kB") {
			continue
		}
		n, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(v, " kB")), 64)
		if err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// BenchmarkAgentMemory is item 6: the agent's resident memory idle (after a
// Ping and a second of quiet) and with 1,000 concurrent `sleep 1` execs
// (VmRSS sampled while all run, and VmHWM, the peak). Each iteration uses
// a fresh agent; values are the last iteration's, in MiB.
//
//	go test -run '^$' -bench AgentMemory -benchtime 1x ./test/bench
func BenchmarkAgentMemory(b *testing.B) {
	var idle, busy, hwm float64
	for range b.N {
		a := startAgent(b)
		cl := a.Client(b)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if err := cl.Ping(ctx); err != nil {
			b.Fatal(err)
		}
		time.Sleep(time.Second)
		st, err := procStatusKiB(a.Cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		idle = st["VmRSS"] / 1024

		var wg sync.WaitGroup
		errs := make(chan error, concurrentExecs)
		ids := make([]string, concurrentExecs)
		for i := range concurrentExecs {
			ids[i] = fmt.Sprintf("mem-%d", i)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := cl.Start(ctx, &agentv1.StartRequest{Id: ids[i], Command: "sleep 1"}); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		// Sample while they run (they were started within the last second).
		st, err = procStatusKiB(a.Cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		busy = st["VmRSS"] / 1024
		for _, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := cl.Wait(ctx, id)
				if err == nil && s.ExitCode != 0 {
					err = fmt.Errorf("exec %s: exit code %d", id, s.ExitCode)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		cancel()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		st, err = procStatusKiB(a.Cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		hwm = st["VmHWM"] / 1024
		a.Kill()
	}
	b.ReportMetric(idle, "idle-MiB")
	b.ReportMetric(busy, "busy-MiB")
	b.ReportMetric(hwm, "hwm-MiB")
}
