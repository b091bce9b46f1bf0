package execstore

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkAccept: durable accepts, 32 at a time, with group commit and
// with bbolt's timer-based Batch.
func BenchmarkAccept(b *testing.B) {
	b.Run("group", func(b *testing.B) { benchAccept(b, Options{}) })
	b.Run("batch-2ms", func(b *testing.B) { benchAccept(b, Options{BatchDelay: 2 * time.Millisecond}) })
}

func benchAccept(b *testing.B, o Options) {
	s, err := Open(filepath.Join(b.TempDir(), "journal.db"), o)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var seq, left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ResetTimer()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				id := fmt.Sprintf("e%d", seq.Add(1))
				if _, _, err := s.Accept(newRecord(id, id)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
