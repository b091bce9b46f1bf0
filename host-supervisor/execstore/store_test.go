package execstore

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "journal.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newRecord(id, key string) *Record {
	return &Record{Id: id, Sandbox: "sb", IdempotencyKey: key, Request: &agentv1.StartRequest{Id: id, Command: "echo " + id}}
}

var exitedStatus = &agentv1.ExecStatus{State: agentv1.ExecState_EXEC_STATE_EXITED, ExitCode: 3, EndedUnixNano: 42}

// Every event from every state: legal moves land where they should, the
// rest are FailedPrecondition and leave the record as it was.
func TestTransitions(t *testing.T) {
	events := map[string]func(r *Record) error{
		"run":     func(r *Record) error { return Run(r, Started{Pid: 7, StartedNano: 1}) },
		"advance": func(r *Record) error { return Advance(r, Progress{StdoutOffset: 5, StdoutKept: 5}) },
		"exit":    func(r *Record) error { return Exit(r, exitedStatus, Progress{StdoutOffset: 6, StdoutKept: 6}) },
		"timeout": func(r *Record) error {
			return Exit(r, &agentv1.ExecStatus{State: agentv1.ExecState_EXEC_STATE_TIMED_OUT, Signal: 9}, Progress{})
		},
		"fail": func(r *Record) error { return Fail(r, codes.InvalidArgument, "bad cwd") },
		"lose": func(r *Record) error { return Lose(r, "agent restarted") },
	}
	want := map[State]map[string]State{
		Accepted: {"run": Running, "fail": Failed, "lose": Lost},
		Running:  {"advance": Running, "exit": Exited, "timeout": TimedOut, "fail": Failed, "lose": Lost},
		Exited:   {}, Failed: {}, TimedOut: {}, Lost: {},
	}
	for from, legal := range want {
		for ev, f := range events {
			r := newRecord("x", "")
			r.State = from
			before := fmt.Sprint(r.String())
			err := f(r)
			to, ok := legal[ev]
			switch {
			case ok && err != nil:
				t.Errorf("%s from %s: %v", ev, StateName(from), err)
			case ok && r.State != to:
				t.Errorf("%s from %s: now %s, want %s", ev, StateName(from), StateName(r.State), StateName(to))
			case !ok && status.Code(err) != codes.FailedPrecondition:
				t.Errorf("%s from %s: err %v, want FailedPrecondition", ev, StateName(from), err)
			case !ok && r.String() != before:
				t.Errorf("%s from %s: rejected move changed the record", ev, StateName(from))
			}
		}
	}
	// Output progress never goes backwards.
	r := newRecord("x", "")
	r.State = Running
	if err := Advance(r, Progress{StdoutOffset: 10, StdoutKept: 10}); err != nil {
		t.Fatal(err)
	}
	if err := Advance(r, Progress{StdoutOffset: 4, StdoutKept: 4}); err == nil {
		t.Fatal("progress went backwards")
	}
	if err := Exit(r, exitedStatus, Progress{StdoutOffset: 10, StdoutKept: 10}); err != nil || r.ExitCode != 3 || r.EndedUnixNano != 42 {
		t.Fatalf("exit: %v %v", err, r)
	}
}

func TestAcceptIdempotent(t *testing.T) {
	s := open(t)
	r1, created, err := s.Accept(newRecord("a", "k1"))
	if err != nil || !created || r1.State != Accepted || r1.Seq == 0 {
		t.Fatalf("accept: %v %v %v", r1, created, err)
	}
	// Same key, same request: the same record, not a new one.
	again := newRecord("a", "k1")
	r2, created, err := s.Accept(again)
	if err != nil || created || r2.Id != "a" || r2.Seq != r1.Seq {
		t.Fatalf("retry: %v %v %v", r2, created, err)
	}
	// Same key, other request.
	other := newRecord("a", "k1")
	other.Request.Command = "rm -rf /"
	if _, _, err := s.Accept(other); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("other request under the key: %v", err)
	}
	// Same id, other key.
	if _, _, err := s.Accept(newRecord("a", "k2")); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("reused id: %v", err)
	}
	// The key is per sandbox.
	r3 := newRecord("b", "k1")
	r3.Sandbox = "other"
	if _, created, err := s.Accept(r3); err != nil || !created {
		t.Fatalf("key in another sandbox: %v %v", created, err)
	}
}

// Concurrent accepts of one key make one record; many keys make many.
func TestAcceptConcurrent(t *testing.T) {
	s := open(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	createdN := 0
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, c, err := s.Accept(newRecord("same", "same"))
			if err != nil {
				t.Error(err)
			}
			_, _, err = s.Accept(newRecord(fmt.Sprintf("e%d", i), fmt.Sprintf("k%d", i)))
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			if c {
				createdN++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if createdN != 1 {
		t.Fatalf("one key created %d records", createdN)
	}
	all, _, _ := s.List("", 0, 1000)
	if len(all) != 65 {
		t.Fatalf("%d records, want 65", len(all))
	}
}

func TestListPagesExpireLoseFrom(t *testing.T) {
	s := open(t)
	for i := range 25 {
		r := newRecord(fmt.Sprintf("e%02d", i), "")
		r.Generation = uint64(i / 10) // 0..9 gen 0, 10..19 gen 1, 20..24 gen 2
		if _, _, err := s.Accept(r); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	var after uint64
	pages := 0
	for {
		page, next, err := s.List("sb", after, 10)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, r := range page {
			got = append(got, r.Id)
		}
		if next == 0 {
			break
		}
		after = next
	}
	if len(got) != 25 || pages != 3 || got[0] != "e00" || got[24] != "e24" {
		t.Fatalf("pages %d: %v", pages, got)
	}
	// Finish e00..e09 (ended long ago for e00..e04).
	for i := range 10 {
		_, err := s.Update(fmt.Sprintf("e%02d", i), func(r *Record) error {
			if err := Run(r, Started{Pid: 1}); err != nil {
				return err
			}
			st := &agentv1.ExecStatus{State: agentv1.ExecState_EXEC_STATE_EXITED, EndedUnixNano: time.Now().UnixNano()}
			if i < 5 {
				st.EndedUnixNano = time.Now().Add(-time.Hour).UnixNano()
			}
			return Exit(r, st, Progress{})
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	del, err := s.Expire(time.Now().Add(-time.Minute), 3)
	if err != nil || len(del) != 7 {
		t.Fatalf("expire: %v %v", del, err)
	}
	if _, err := s.Get("e09"); err != nil {
		t.Fatal("newest finished record expired")
	}
	if _, err := s.Get("e10"); err != nil {
		t.Fatal("unfinished record expired")
	}
	if err := s.Delete("e10"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("delete unfinished: %v", err)
	}
	lost, err := s.LoseFrom("sb", 1, "not replayed")
	if err != nil || len(lost) != 15 {
		t.Fatalf("lose from gen 1: %v %v", lost, err)
	}
	r, _ := s.Get("e15")
	if r.State != Lost || r.Reason != "not replayed" {
		t.Fatalf("e15: %v", r)
	}
}

// The crash helper: commits records in a loop until killed.
func TestMain(m *testing.M) {
	if p := os.Getenv("EXECSTORE_CRASH_WRITER"); p != "" {
		crashWriter(p)
		return
	}
	os.Exit(m.Run())
}

// crashWriter accepts records and moves them through their states with
// concurrent batched commits, printing nothing; the test kills it with
// SIGKILL somewhere in the middle of a commit.
func crashWriter(path string) {
	s, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	base := strconv.FormatInt(time.Now().UnixNano(), 36)
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("%s-%d-%d", base, w, i)
				r := newRecord(id, id)
				r.Request.Command = string(make([]byte, rand.IntN(8000))) // records of many page sizes
				if _, _, err := s.Accept(r); err != nil {
					os.Exit(2)
				}
				s.Update(id, func(r *Record) error { return Run(r, Started{Pid: 1}) })
				s.Update(id, func(r *Record) error { return Advance(r, Progress{StdoutOffset: 10, StdoutKept: 10}) })
				s.Update(id, func(r *Record) error { return Exit(r, exitedStatus, Progress{StdoutOffset: 20, StdoutKept: 20}) })
			}
		}()
	}
	wg.Wait()
}

// A journal whose writer was killed mid-commit opens at a consistent state:
// every record readable, every index entry pointing at a record, states
// consistent with the transitions, and it accepts new commits.
func TestJournalAfterCrashMidCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.db")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		cmd := exec.Command(self, "-test.run=^$")
		cmd.Env = append(os.Environ(), "EXECSTORE_CRASH_WRITER="+path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(100+rand.IntN(300)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		s, err := Open(path, Options{})
		if err != nil {
			t.Fatalf("round %d: open after crash: %v", round, err)
		}
		all, _, err := s.List("", 0, 1<<30)
		if err != nil {
			t.Fatalf("round %d: list: %v", round, err)
		}
		nonFinal, err := s.NonFinal()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range all {
			switch r.State {
			case Accepted, Running:
			case Lost:
				if r.Reason != "writer crashed" {
					t.Fatalf("round %d: lost record %v", round, r)
				}
			case Exited:
				if r.StdoutOffset != 20 || r.ExitCode != 3 {
					t.Fatalf("round %d: torn exited record %v", round, r)
				}
			default:
				t.Fatalf("round %d: record in state %s", round, StateName(r.State))
			}
			if again, created, err := s.Accept(newRecord(r.Id, r.IdempotencyKey)); err != nil && status.Code(err) != codes.AlreadyExists || created {
				t.Fatalf("round %d: key index of %s broken: %v %v %v", round, r.Id, again, created, err)
			}
		}
		// Recovery resolves every unfinished record.
		for _, r := range nonFinal {
			if _, err := s.Update(r.Id, func(r *Record) error { return Lose(r, "writer crashed") }); err != nil {
				t.Fatalf("round %d: resolve %s: %v", round, r.Id, err)
			}
		}
		if nf, _ := s.NonFinal(); len(nf) != 0 {
			t.Fatalf("round %d: %d unresolved records", round, len(nf))
		}
		t.Logf("round %d: %d records, %d resolved after the crash", round, len(all), len(nonFinal))
		if len(all) == 0 {
			t.Fatalf("round %d: the writer committed nothing", round)
		}
		s.Close()
	}
}

// Inline output is stored with its record, only when it matches the
// record's kept count (an overtaken commit of older output changes
// nothing), and deleted with the record.
func TestInlineOutput(t *testing.T) {
	s := open(t)
	if _, _, err := s.Accept(newRecord("a", "")); err != nil {
		t.Fatal(err)
	}
	run := func(r *Record) error { return Run(r, Started{Pid: 1}) }
	if _, err := s.UpdateOutput("a", Output{Has: [2]bool{true, true}}, run); err != nil {
		t.Fatal(err)
	}
	newer := Output{Data: [2][]byte{[]byte("hello"), []byte("err")}, Has: [2]bool{true, true}}
	if _, err := s.UpdateOutput("a", newer, func(r *Record) error {
		return Exit(r, exitedStatus, Progress{StdoutOffset: 5, StdoutKept: 5, StderrOffset: 3, StderrKept: 3})
	}); err != nil {
		t.Fatal(err)
	}
	// An older flush landing after the exit.
	older := Output{Data: [2][]byte{[]byte("hel"), nil}, Has: [2]bool{true, true}}
	s.UpdateOutput("a", older, func(r *Record) error { return nil })
	got, err := s.InlineOutput("a")
	if err != nil || string(got.Data[0]) != "hello" || string(got.Data[1]) != "err" || !got.Has[0] || !got.Has[1] {
		t.Fatalf("inline %q %v %v", got.Data, got.Has, err)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.InlineOutput("a"); got.Has[0] || got.Has[1] {
		t.Fatal("inline output outlived its record")
	}
}
