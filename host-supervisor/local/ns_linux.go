package local

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// initArg0 marks this executable re-run as the sandbox's namespace setup
// step: it runs in the new namespaces, sets up mounts and the hostname, and
// execs the agent (which keeps PID 1).
const initArg0 = "sailbox-local-init"

// Hostname of an isolated local sandbox.
const Hostname = "sailbox-local"

func init() {
	if len(os.Args) > 1 && os.Args[0] == initArg0 {
		os.Exit(nsInit(os.Args[1:]))
	}
}

// isolatedCommand re-runs this executable in new namespaces as initArg0,
// which then execs the agent.
func isolatedCommand(bin string, args []string, privateTmp bool) *exec.Cmd {
	self := "/proc/self/exe"
	cmd := exec.Command(self, append([]string{strconv.FormatBool(privateTmp), bin}, args...)...)
	cmd.Args[0] = initArg0
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
		// Its own session: the terminal's Ctrl-C and hangup are the REPL's.
		Setsid: true,
		// The agent is PID 1 of its namespace: its death kills everything in it.
		Pdeathsig: syscall.SIGKILL,
	}
	return cmd
}

// plainCommand runs the agent directly.
func plainCommand(bin string, args []string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid: true,
		// SIGTERM, not SIGKILL: the agent then kills its execs' process groups.
		Pdeathsig: syscall.SIGTERM,
	}
	return cmd
}

func isNamespaceDenied(err error) bool {
	return errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC)
}

// nsInit runs inside the new namespaces: args are PRIVATE_TMP AGENT_BIN
// AGENT_ARGS...
func nsInit(args []string) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "sailbox-local-init: "+format+"\n", a...)
		return 1
	}
	if len(args) < 2 {
		return fail("usage: %s PRIVATE_TMP AGENT_BIN [ARGS...]", initArg0)
	}
	privateTmp, _ := strconv.ParseBool(args[0])
	bin := args[1]
	// Open the agent before /tmp is covered: the binary may live there (a
	// test's build directory). It is executed through the descriptor.
	exe, err := os.Open(bin)
	if err != nil {
		return fail("open agent: %v", err)
	}
	// Nothing mounted here may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fail("make / a slave mount: %v", err)
	}
	// A /proc of the new PID namespace: ps shows the sandbox only.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fail("mount /proc: %v", err)
	}
	if privateTmp {
		if err := unix.Mount("tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
			return fail("mount a private /tmp: %v", err)
		}
		if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
			if err := unix.Mount("tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
				return fail("mount a private /dev/shm: %v", err)
			}
		}
	}
	if err := unix.Sethostname([]byte(Hostname)); err != nil {
		return fail("sethostname: %v", err)
	}
	env := os.Environ()
	// The descriptor is close-on-exec; the kernel has opened the file by then.
	self := fmt.Sprintf("/proc/self/fd/%d", exe.Fd())
	if err := unix.Exec(self, append([]string{bin}, args[2:]...), env); err != nil {
		return fail("exec %s: %v", bin, err)
	}
	return 0
}

// killSession kills what is left of the agent's session (its execs run in
// their own process groups but stay in its session unless they setsid).
func killSession(sid int) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if s, ok := sessionOf(pid); ok && s == sid {
			unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// sessionOf reads a process's session id from /proc/PID/stat.
func sessionOf(pid int) (int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name is in parentheses and may contain anything.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// state ppid pgrp session ...
	if len(f) < 4 {
		return 0, false
	}
	sid, err := strconv.Atoi(f[3])
	return sid, err == nil
}
