package sandbox

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/execstore"
	"github.com/sailbox/sailbox/internal/agenttest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestRegistry(t *testing.T) {
	a := agenttest.Start(t)
	store, err := execstore.Open(filepath.Join(t.TempDir(), "journal.db"), execstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	// A stalled "agent": accepts and never answers.
	sock := filepath.Join(t.TempDir(), "stalled.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c)
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{PingInterval: 50 * time.Millisecond, PingTimeout: 200 * time.Millisecond}
	r, err := NewRegistry(ctx, store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	good, err := r.Add("good", a.Addr, map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	if !good.Connected() {
		t.Fatalf("good sandbox not connected after Add: %v", good.Proto())
	}
	inst, ok := good.Instance()
	if !ok || inst.Pid == 0 {
		t.Fatalf("instance %v", inst)
	}
	stalled, err := r.Add("stalled", "unix://"+sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := stalled.Proto(); p.Connected || p.LastError == "" {
		t.Fatalf("stalled sandbox: %v", p)
	}
	if _, err := r.Add("good", "unix:///elsewhere", nil); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("other address under an id: %v", err)
	}
	if _, err := r.Add("bad/id", a.Addr, nil); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad id: %v", err)
	}
	if _, err := r.Add("x", "tcp://1.2.3.4:5", nil); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("bad address: %v", err)
	}
	if _, err := r.SetGeneration("good", 3); err != nil {
		t.Fatal(err)
	}

	// A restarted agent is a new instance, seen by the health loop.
	a.KillHard()
	a.Restart(t)
	deadline := time.Now().Add(3 * time.Second)
	for {
		if i, _ := good.Instance(); i != inst && good.Connected() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("restarted agent not seen")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The registry is journalled: a new one has the same sandboxes.
	cancel()
	r.Close()
	r2, err := NewRegistry(context.Background(), store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if len(r2.List()) != 2 {
		t.Fatalf("reloaded %d sandboxes", len(r2.List()))
	}
	g, err := r2.Get("good")
	if err != nil || g.Generation() != 3 || g.Proto().Labels["k"] != "v" {
		t.Fatalf("reloaded good: %v %v", g.Proto(), err)
	}
	if err := r2.Remove("stalled"); err != nil {
		t.Fatal(err)
	}
	if stalledCtx := stalled.Context(); stalledCtx.Err() == nil {
		t.Fatal("old registry's sandbox context still live")
	}
	if _, err := r2.Get("stalled"); status.Code(err) != codes.NotFound {
		t.Fatalf("removed: %v", err)
	}
	if sbs, _ := store.Sandboxes(); len(sbs) != 1 {
		t.Fatalf("journal holds %d sandboxes", len(sbs))
	}
}
