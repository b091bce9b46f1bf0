// Command fakeagent stands in for the guest agent in imageinit's namespace
// test: it logs what it sees to /run/agent.log, leaves an orphan for PID 1
// to reap, and logs SIGTERM before exiting.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "orphan-parent" {
		// Start a grandchild that outlives us: it becomes PID 1's child and,
		// when it exits, a zombie unless PID 1 reaps it.
		p, err := os.StartProcess(os.Args[0], []string{os.Args[0], "orphan"}, &os.ProcAttr{})
		if err == nil {
			fmt.Print(p.Pid)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "orphan" {
		time.Sleep(200 * time.Millisecond)
		return
	}
	f, err := os.OpenFile("/run/agent.log", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		os.Exit(3)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	host, _ := os.Hostname()
	loFlags, _ := os.ReadFile("/sys/class/net/lo/flags")
	fmt.Fprintf(f, "start pid=%d ppid=%d args=%s hostname=%s lo=%s env=%s\n", os.Getpid(), os.Getppid(),
		strings.Join(os.Args[1:], ","), host, strings.TrimSpace(string(loFlags)), os.Getenv("SAILBOX_TEST_VAR"))
	var out strings.Builder
	pa := &os.ProcAttr{Files: []*os.File{nil, nil, nil}}
	r, w, _ := os.Pipe()
	pa.Files[1] = w
	if p, err := os.StartProcess(os.Args[0], []string{os.Args[0], "orphan-parent"}, pa); err == nil {
		w.Close()
		b := make([]byte, 32)
		n, _ := r.Read(b)
		out.Write(b[:n])
		p.Wait()
	}
	fmt.Fprintf(f, "orphan pid=%s\n", out.String())
	<-term
	fmt.Fprintf(f, "term pid=%d\n", os.Getpid())
	f.Close()
}
