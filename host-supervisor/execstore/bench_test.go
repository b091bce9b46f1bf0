package execstore

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkAccept: durable accepts, 32 at a time (Batch shares fsyncs).
func BenchmarkAccept(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "journal.db"), Options{})
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
