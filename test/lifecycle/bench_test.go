package lifecycletest

import (
	"context"
	"testing"

	"github.com/sailbox/sailbox/host-supervisor/lifecycle"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
)

// BenchmarkCheckpointPause is a whole checkpoint for a VMM that can only
// pause (freeze, pause, resume, thaw, journal) against the real agent with
// nothing to freeze: the orchestration's own cost.
// BenchmarkFreezeThawRPC is its baseline: the two agent calls alone.
func BenchmarkCheckpointPause(b *testing.B) {
	a := startAgentHooks(b, false)
	c := a.client(b, a.addr)
	sb := lifecycle.New(lifecycle.Config{ID: "b", Agent: c, VMM: &fakeVMM{ev: a.ev}, Journal: lifecycle.NewMemJournal("b", 0)})
	ctx := context.Background()
	for b.Loop() {
		if _, err := sb.Checkpoint(ctx, lifecycle.CheckpointOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFreezeThawRPC(b *testing.B) {
	a := startAgentHooks(b, false)
	c := a.client(b, a.addr)
	ctx := context.Background()
	for b.Loop() {
		if _, err := c.Freeze(ctx, &agentv1.FreezeRequest{}); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Thaw(ctx, &agentv1.ThawRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}
