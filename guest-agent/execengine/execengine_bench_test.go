package execengine

import (
	"context"
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/sailbox/sailbox/guest-agent/reaper"
)

func benchManager(b *testing.B) *Manager {
	b.Helper()
	testReaperOnce.Do(func() {
		var err error
		if testReaper, err = reaper.New(nil); err != nil {
			b.Fatal(err)
		}
	})
	dir := b.TempDir()
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		// tmpfs, as the guest's /run
		if d, err := os.MkdirTemp("/dev/shm", "execengine-bench-"); err == nil {
			dir = d
			b.Cleanup(func() { os.RemoveAll(d) })
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	m, err := NewManager(ctx, Config{StateDir: dir}, testReaper)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Shutdown(); cancel() })
	return m
}

// BenchmarkStartWaitRelease is the engine's share of an exec round trip
// (/bin/true: start, wait for the exit and drained output, release), beside
// a bare fork+exec+wait through the same reaper in the same process,
// interleaved (the machine may be shared). engine-us and forkexec-us are
// medians; x-forkexec is their ratio.
func BenchmarkStartWaitRelease(b *testing.B) {
	m := benchManager(b)
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	fd := devnull.Fd()
	attr := &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{fd, fd, fd}, Sys: &syscall.SysProcAttr{Setpgid: true}}
	var eng, raw []time.Duration
	for i := range b.N {
		t0 := time.Now()
		e, _, err := m.Start(Spec{ID: fmt.Sprintf("b%d-%d", b.N, i), Argv: []string{"/bin/true"}})
		if err != nil {
			b.Fatal(err)
		}
		<-e.Done()
		if err := m.Release(e.ID()); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		_, ch, err := testReaper.Start(func() (int, error) { return syscall.ForkExec("/bin/true", []string{"/bin/true"}, attr) })
		if err != nil {
			b.Fatal(err)
		}
		<-ch
		eng, raw = append(eng, t1.Sub(t0)), append(raw, time.Since(t1))
	}
	slices.Sort(eng)
	slices.Sort(raw)
	me, mr := eng[len(eng)/2], raw[len(raw)/2]
	b.ReportMetric(float64(me.Nanoseconds())/1e3, "engine-us")
	b.ReportMetric(float64(mr.Nanoseconds())/1e3, "forkexec-us")
	b.ReportMetric(float64(me)/float64(mr), "x-forkexec")
}
