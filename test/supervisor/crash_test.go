package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sailbox/sailbox/internal/agenttest"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	supervisorv1 "github.com/sailbox/sailbox/protocol/supervisor/v1"
)

// crashExec is one exec of the crash test: it appends its id to the
// journal file in the "guest", prints a known text of its own length, and
// takes its own time.
type crashExec struct {
	id    string
	lines int
	sleep string
}

func (e crashExec) command(logFile string) string {
	return fmt.Sprintf("echo %s >> %s; i=0; while [ $i -lt %d ]; do echo %s-$i; i=$((i+1)); done; sleep %s; echo end-%s; echo err-%s >&2",
		e.id, logFile, e.lines, e.id, e.sleep, e.id, e.id)
}

func (e crashExec) stdout() string {
	var b strings.Builder
	for i := range e.lines {
		fmt.Fprintf(&b, "%s-%d\n", e.id, i)
	}
	fmt.Fprintf(&b, "end-%s\n", e.id)
	return b.String()
}

// 300 execs of mixed length through the daemon while it is killed with
// SIGKILL at random moments and restarted: every exec ends in a final
// state, no exec runs twice, every exited one ran exactly once and its
// stored output is exact; the only lost ones are those the agent never
// got (journalled, then the daemon died before the agent acknowledged).
func TestSupervisorCrash(t *testing.T) {
	const n = 300
	a := agenttest.Start(t)
	d := startDaemon(t)
	c := newAPIClient(t, d.API)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := c.do(ctx, func(api supervisorv1.SupervisorClient) error {
		_, err := api.AddSandbox(ctx, &supervisorv1.AddSandboxRequest{Id: "sb", Agent: a.Addr})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(t.TempDir(), "ran.log")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))
	execs := make([]crashExec, n)
	sleeps := []string{"0", "0", "0.05", "0.2", "0.5", "1.5"}
	for i := range execs {
		lines := rng.IntN(400)
		if i%10 == 0 {
			lines = 8000 + rng.IntN(8000) // past InlineMax: output files, cut back on recovery
		}
		execs[i] = crashExec{id: fmt.Sprintf("c%03d", i), lines: lines, sleep: sleeps[rng.IntN(len(sleeps))]}
	}

	// The killer: SIGKILL at random moments while execs are submitted and run.
	killerDone := make(chan struct{})
	stopKiller := make(chan struct{})
	kills := 0
	go func() {
		defer close(killerDone)
		for kills < 5 {
			select {
			case <-stopKiller:
				return
			case <-time.After(time.Duration(150+rng.IntN(500)) * time.Millisecond):
			}
			d.KillHard()
			kills++
			time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
			d.Start()
		}
	}()

	// Submitters: each StartExec is retried across crashes with the same
	// idempotency key (the exec id), as a control plane would.
	var wg sync.WaitGroup
	work := make(chan crashExec)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range work {
				err := c.do(ctx, func(api supervisorv1.SupervisorClient) error {
					_, err := api.StartExec(ctx, &supervisorv1.StartExecRequest{
						Sandbox: "sb", Request: &agentv1.StartRequest{Id: e.id, Command: e.command(logFile)},
					})
					return err
				})
				if err != nil {
					t.Errorf("start %s: %v", e.id, err)
				}
				time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			}
		}()
	}
	for _, e := range execs {
		work <- e
	}
	close(work)
	wg.Wait()
	// Let the killer strike during the running phase too, then stop it.
	time.Sleep(time.Second)
	close(stopKiller)
	<-killerDone
	t.Logf("killed the supervisor %d times", kills)

	// Final states.
	ran := map[string]int{}
	b, _ := os.ReadFile(logFile)
	for _, line := range strings.Fields(string(b)) {
		ran[line]++
	}
	states := map[string]int{}
	for _, e := range execs {
		var rec *supervisorv1.ExecRecord
		err := c.do(ctx, func(api supervisorv1.SupervisorClient) (err error) {
			rec, err = api.WaitExec(ctx, &supervisorv1.ExecRef{Sandbox: "sb", Id: e.id})
			return err
		})
		if err != nil {
			t.Fatalf("wait %s: %v", e.id, err)
		}
		states[rec.State.String()]++
		switch rec.State {
		case supervisorv1.ExecState_EXEC_STATE_EXITED:
			if rec.ExitCode != 0 {
				t.Errorf("%s: exit %d", e.id, rec.ExitCode)
			}
			if ran[e.id] != 1 {
				t.Errorf("%s exited but ran %d times", e.id, ran[e.id])
			}
			out, errOut := readOutput(t, ctx, c, e.id)
			if out != e.stdout() || errOut != "err-"+e.id+"\n" {
				t.Errorf("%s: output differs: %d bytes stdout (want %d, same=%v), stderr %q; record %v", e.id, len(out), len(e.stdout()), out == e.stdout(), errOut, rec)
			}
		case supervisorv1.ExecState_EXEC_STATE_LOST:
			if !strings.HasPrefix(rec.Reason, "not started") {
				t.Errorf("%s lost: %s", e.id, rec.Reason)
			}
			if ran[e.id] != 0 {
				t.Errorf("%s lost as not started but ran %d times", e.id, ran[e.id])
			}
		default:
			t.Errorf("%s ended %s: %s", e.id, rec.State, rec.Reason)
		}
	}
	for id, k := range ran {
		if k > 1 {
			t.Errorf("%s ran %d times", id, k)
		}
	}
	t.Logf("final states: %v", states)
}

func readOutput(t *testing.T, ctx context.Context, c *apiClient, id string) (string, string) {
	var out, errb bytes.Buffer
	err := c.do(ctx, func(api supervisorv1.SupervisorClient) error {
		out.Reset()
		errb.Reset()
		s, err := api.ExecOutput(ctx, &supervisorv1.ExecOutputRequest{Sandbox: "sb", Id: id, Follow: true})
		if err != nil {
			return err
		}
		for {
			chunk, err := s.Recv()
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			if err != nil {
				return err
			}
			if chunk.Final != nil {
				return nil
			}
			if chunk.Stream == agentv1.Stream_STREAM_STDERR {
				errb.Write(chunk.Data)
			} else {
				out.Write(chunk.Data)
			}
		}
	})
	if err != nil {
		t.Fatalf("output %s: %v", id, err)
	}
	return out.String(), errb.String()
}
