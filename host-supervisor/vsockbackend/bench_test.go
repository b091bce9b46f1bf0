package vsockbackend

import (
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const streamBytes = 256 << 20

// copyUnixBaseline moves n bytes over a plain unix socket between two
// goroutines, the way the hybrid client writes into the back end.
func copyUnixBaseline(tb testing.TB, n int) time.Duration {
	dir := tb.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "b.sock"))
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- 0
			return
		}
		defer c.Close()
		got, _ := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, readChunk))
		done <- got
	}()
	c, err := net.Dial("unix", filepath.Join(dir, "b.sock"))
	if err != nil {
		tb.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	start := time.Now()
	for sent := 0; sent < n; sent += len(buf) {
		c.Write(buf)
	}
	c.Close()
	if got := <-done; got != int64(n) {
		tb.Fatalf("baseline moved %d of %d bytes", got, n)
	}
	return time.Since(start)
}

// drain reads a guest connection to the end.
func drain(c *gconn, want int) (int, error) {
	buf := make([]byte, 64<<10)
	total := 0
	for total < want {
		n, err := c.Read(buf)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func BenchmarkStream256MiB(b *testing.B) {
	b.Run("unix-baseline", func(b *testing.B) {
		b.SetBytes(streamBytes)
		var total time.Duration
		for range b.N {
			total += copyUnixBaseline(b, streamBytes)
		}
		b.ReportMetric(float64(streamBytes)*float64(b.N)/total.Seconds()/1e6, "MB/s")
	})
	for _, rx := range []struct {
		name       string
		size       int
		noEventIdx bool
	}{{"host-to-guest-rx4k", 4096, false}, {"host-to-guest-rx64k", 64 << 10, false}, {"host-to-guest-rx4k-no-event-idx", 4096, true}} {
		b.Run(rx.name, func(b *testing.B) {
			e := startBackend(b)
			g := newFakeGuest(b, e.cfg.VhostUserSocket, testCID, guestOpts{rxBufSize: rx.size, noEventIdx: rx.noEventIdx})
			ln := g.Listen(10000)
			e.hostDialRetry(b, 10000).Close()
			<-ln
			payload := make([]byte, 1<<20)
			b.SetBytes(streamBytes)
			b.ResetTimer()
			var el, baseEl time.Duration
			for range b.N {
				// The baseline runs interleaved, so that both see the
				// same load on a shared machine.
				b.StopTimer()
				baseEl += copyUnixBaseline(b, streamBytes)
				b.StartTimer()
				start := time.Now()
				c, err := e.hostDial(10000)
				if err != nil {
					b.Fatal(err)
				}
				gc := <-ln
				go func() {
					for sent := 0; sent < streamBytes; sent += len(payload) {
						if _, err := c.Write(payload); err != nil {
							return
						}
					}
				}()
				if n, err := drain(gc, streamBytes); err != nil {
					b.Fatalf("guest read %d of %d: %v", n, streamBytes, err)
				}
				c.Close()
				el += time.Since(start)
			}
			b.StopTimer()
			mbps := float64(streamBytes) * float64(b.N) / el.Seconds() / 1e6
			base := float64(streamBytes) * float64(b.N) / baseEl.Seconds() / 1e6
			b.ReportMetric(mbps, "MB/s")
			b.ReportMetric(base, "baseline-MB/s")
			b.ReportMetric(mbps/base, "ratio")
			if v := g.Violations(); len(v) > 0 {
				b.Fatalf("violations: %q", v)
			}
		})
	}
}

// BenchmarkConcurrent256 opens 256 connections at once and moves 1 MiB
// host → guest on each.
func BenchmarkConcurrent256(b *testing.B) {
	const conns, each = 256, 1 << 20
	e := startBackend(b)
	g := newFakeGuest(b, e.cfg.VhostUserSocket, testCID, guestOpts{})
	ln := g.Listen(10000)
	e.hostDialRetry(b, 10000).Close()
	<-ln
	go func() {
		for gc := range ln {
			go func() { drain(gc, each); gc.Close() }()
		}
	}()
	payload := make([]byte, 64<<10)
	b.SetBytes(conns * each)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		var wg sync.WaitGroup
		for range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := e.hostDial(10000)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				for sent := 0; sent < each; sent += len(payload) {
					if _, err := c.Write(payload); err != nil {
						b.Error(err)
						return
					}
				}
				// Wait for the guest to have consumed everything: it
				// closes when done, so the host sees EOF.
				c.(*net.UnixConn).CloseWrite()
				io.Copy(io.Discard, c)
			}()
		}
		wg.Wait()
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(conns*each)*float64(b.N)/el.Seconds()/1e6, "MB/s")
	b.ReportMetric(float64(conns)*float64(b.N)/el.Seconds(), "conns/s")
}
