package supervisor

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// hostile serves a unix socket with one misbehaviour per connection.
func hostile(t *testing.T, name string, serve func(net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), name+".sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return "unix://" + sock
}

// garbage writes random bytes forever.
func garbage(c net.Conn) {
	go io.Copy(io.Discard, c)
	buf := make([]byte, 64<<10)
	for {
		rand.Read(buf)
		if _, err := c.Write(buf); err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// oversized answers every request with a ttrpc response frame of 4 MiB + 1
// bytes (over ttrpc's message cap) on the request's stream.
func oversized(c net.Conn) {
	hdr := make([]byte, 10)
	body := make([]byte, 4<<20+1)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[0:4])
		if n > 4<<20 {
			return
		}
		if _, err := io.CopyN(io.Discard, c, int64(n)); err != nil {
			return
		}
		out := make([]byte, 10)
		binary.BigEndian.PutUint32(out[0:4], uint32(len(body)))
		copy(out[4:8], hdr[4:8]) // stream id
		out[8] = 2               // response
		if _, err := c.Write(out); err != nil {
			return
		}
		if _, err := c.Write(body); err != nil {
			return
		}
	}
}

// stalled reads and never answers.
func stalled(c net.Conn) { io.Copy(io.Discard, c) }

// endlessAgent speaks the agent protocol correctly, except that every
// exec's output never ends.
type endlessAgent struct{}

func (endlessAgent) Ping(context.Context, *agentv1.PingRequest) (*agentv1.PingResponse, error) {
	return &agentv1.PingResponse{}, nil
}
func (endlessAgent) Info(context.Context, *agentv1.InfoRequest) (*agentv1.InfoResponse, error) {
	return &agentv1.InfoResponse{BootId: "endless", Pid: 1, StartedUnixNano: 1}, nil
}
func running(id string) *agentv1.ExecStatus {
	return &agentv1.ExecStatus{Id: id, State: agentv1.ExecState_EXEC_STATE_RUNNING, Pid: 2}
}
func (endlessAgent) Start(ctx context.Context, r *agentv1.StartRequest) (*agentv1.StartResponse, error) {
	return &agentv1.StartResponse{Status: running(r.Id), Created: true}, nil
}
func (endlessAgent) Output(ctx context.Context, r *agentv1.OutputRequest, s agentv1.Exec_OutputServer) error {
	data := make([]byte, 1<<20)
	off := r.StdoutOffset
	for ctx.Err() == nil {
		if err := s.Send(&agentv1.OutputChunk{Stream: agentv1.Stream_STREAM_STDOUT, Offset: off, Data: data}); err != nil {
			return err
		}
		off += uint64(len(data))
	}
	return ctx.Err()
}
func (endlessAgent) Wait(ctx context.Context, r *agentv1.ExecRef) (*agentv1.ExecStatus, error) {
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}
func (endlessAgent) Get(ctx context.Context, r *agentv1.ExecRef) (*agentv1.ExecStatus, error) {
	return running(r.Id), nil
}
func (endlessAgent) Signal(context.Context, *agentv1.SignalRequest) (*agentv1.SignalResponse, error) {
	return &agentv1.SignalResponse{}, nil
}
func (endlessAgent) WriteStdin(context.Context, *agentv1.WriteStdinRequest) (*agentv1.WriteStdinResponse, error) {
	return &agentv1.WriteStdinResponse{}, nil
}
func (endlessAgent) CloseStdin(context.Context, *agentv1.ExecRef) (*agentv1.CloseStdinResponse, error) {
	return &agentv1.CloseStdinResponse{}, nil
}
func (endlessAgent) Resize(context.Context, *agentv1.ResizeRequest) (*agentv1.ResizeResponse, error) {
	return &agentv1.ResizeResponse{}, nil
}
func (endlessAgent) List(context.Context, *agentv1.ListRequest) (*agentv1.ListResponse, error) {
	return &agentv1.ListResponse{}, nil
}
func (endlessAgent) Release(context.Context, *agentv1.ExecRef) (*agentv1.ReleaseResponse, error) {
	return nil, status.Error(codes.FailedPrecondition, "still running")
}

func serveEndless(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "endless.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	agentv1.RegisterAgentService(srv, endlessAgent{})
	agentv1.RegisterExecService(srv, endlessAgent{})
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + sock
}

// Hostile agents (garbage frames, replies over the 4 MiB cap, a stream
// that never ends, a stalled connection) in four sandboxes of one daemon:
// it stays up, its memory stays bounded, stored output stays at the cap,
// and execs in a fifth, healthy sandbox keep working meanwhile.
func TestHostileAgents(t *testing.T) {
	const outputCap = 4 << 20
	good := agenttest.Start(t)
	d := startDaemon(t, "--output-cap", fmt.Sprint(outputCap))
	c := newAPIClient(t, d.API)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sandboxes := map[string]string{
		"good":      good.Addr,
		"garbage":   hostile(t, "garbage", garbage),
		"oversized": hostile(t, "oversized", oversized),
		"stalled":   hostile(t, "stalled", stalled),
		"endless":   serveEndless(t),
	}
	for id, addr := range sandboxes {
		if err := c.do(ctx, func(api supervisorv1.SupervisorClient) error {
			_, err := api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: id, Agent: addr})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	rssBefore := vmRSS(t, d.Pid())

	// Start execs in every hostile sandbox; each may fail or hang, but only
	// for its own caller.
	var wg sync.WaitGroup
	for _, id := range []string{"garbage", "oversized", "stalled", "endless"} {
		for i := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
				defer ccancel()
				api, tc, err := c.get(cctx)
				if err != nil {
					t.Errorf("dial supervisor: %v", err)
					return
				}
				_ = tc
				resp, err := api.StartExec(cctx, &supervisorv1.StartExecRequest{
					Sandbox: id, Request: &agentv1.StartRequest{Id: fmt.Sprintf("%s-%d", id, i), Command: "true"},
				})
				t.Logf("start in %s: %v, %v", id, resp.GetRecord().GetState(), err)
			}()
		}
	}

	// Meanwhile the healthy sandbox works normally.
	for i := range 20 {
		id := fmt.Sprintf("good-%d", i)
		began := time.Now()
		var rec *supervisorv1.ExecRecord
		err := c.do(ctx, func(api supervisorv1.SupervisorClient) error {
			if _, err := api.StartExec(ctx, &supervisorv1.StartExecRequest{
				Sandbox: "good", Request: &agentv1.StartRequest{Id: id, Command: "echo ok"},
			}); err != nil {
				return err
			}
			var err error
			rec, err = api.WaitExec(ctx, &supervisorv1.ExecRef{Sandbox: "good", Id: id})
			return err
		})
		if err != nil || rec.State != supervisorv1.ExecState_EXEC_STATE_EXITED || rec.Stdout.Kept != 3 {
			t.Fatalf("healthy sandbox exec %s: %v %v", id, rec, err)
		}
		if el := time.Since(began); el > 3*time.Second {
			t.Errorf("healthy sandbox exec %s took %v", id, el)
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	// Let the endless streams run a while longer.
	time.Sleep(2 * time.Second)

	if syscall.Kill(d.Pid(), 0) != nil {
		t.Fatal("the supervisor died")
	}
	var rec *supervisorv1.ExecRecord
	if err := c.do(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		rec, err = api.GetExec(ctx, &supervisorv1.ExecRef{Sandbox: "endless", Id: "endless-0"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("endless exec: state %v, stdout %v", rec.State, rec.Stdout)
	if rec.Stdout.Kept > outputCap || rec.Stdout.Total <= outputCap || !rec.Stdout.Truncated {
		t.Errorf("endless exec stored %d of %d bytes (cap %d), truncated=%v", rec.Stdout.Kept, rec.Stdout.Total, outputCap, rec.Stdout.Truncated)
	}
	rssAfter := vmRSS(t, d.Pid())
	t.Logf("supervisor RSS: %d KiB before, %d KiB after (%d MB streamed by the endless agent)", rssBefore, rssAfter, rec.Stdout.Total>>20)
	if rssAfter > rssBefore+200<<10 {
		t.Errorf("supervisor memory grew from %d to %d KiB", rssBefore, rssAfter)
	}
	var sbs *supervisorv1.ListSandboxesResponse
	if err := c.do(ctx, func(api supervisorv1.SupervisorClient) (err error) {
		sbs, err = api.ListSandboxes(ctx, &supervisorv1.ListSandboxesRequest{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, sb := range sbs.Sandboxes {
		t.Logf("sandbox %s: connected=%v last_error=%q", sb.Id, sb.Connected, sb.LastError)
		if sb.Id == "good" && !sb.Connected {
			t.Error("the healthy sandbox is not connected")
		}
	}
}
