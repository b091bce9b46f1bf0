package pid1

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"
	"github.com/sailbox/sailbox/rootfs/envfile"
	"golang.org/x/sys/unix"
)

// SystemPoweroff powers the machine off. In a PID namespace other than the
// initial one the kernel turns this into the end of that namespace's init
// (its parent sees it killed by SIGINT), so it never reaches the host.
func SystemPoweroff() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// Run is PID 1. It returns only when powering off failed.
func Run(o Options, log *slog.Logger) error {
	start := time.Now()
	if os.Getpid() != 1 {
		return fmt.Errorf("imageinit must run as PID 1 (pid %d)", os.Getpid())
	}
	if o.Poweroff == nil {
		return errors.New("imageinit: Options.Poweroff is nil")
	}
	// Signals first, so a request during boot is kept for the main loop.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGINT, unix.SIGPWR, unix.SIGUSR2, unix.SIGHUP)
	p := &pid1{log: log, sigs: sigs}
	p.mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	cmdline := o.Cmdline
	if cmdline == "" {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			log.Warn("kernel command line", "err", err)
		}
		cmdline = string(b)
	}
	c, err := ParseCmdline(cmdline)
	if err != nil {
		log.Warn("kernel command line", "err", err) // carry on with what parsed
	}
	c.Poweroff = o.Poweroff
	p.cfg = c
	if c.Root != "" && onInitramfs() {
		// Stage 1 of a root-disk boot: on success this exec's the image's
		// own init as PID 1 and never returns.
		err := p.switchRoot()
		log.Error("switching to the root disk failed; staying on the initramfs", "root", c.Root, "err", err)
	}
	p.boot()
	fmt.Fprintf(os.Stdout, "%s boot=%dms modules=%dms\n", ReadyMarker, time.Since(start).Milliseconds(), p.modulesTook.Milliseconds())
	if c.BootOnly {
		return p.shutdown("sailbox.bootonly")
	}
	p.loop()
	return p.shutdown(p.reason)
}

type pid1 struct {
	cfg  Config
	log  *slog.Logger
	sigs chan os.Signal

	mounts []string // what we mounted, for unmounting in reverse

	agentPID     int
	agentEnv     []string
	agentStarted time.Time
	modulesTook  time.Duration
	backoff      time.Duration
	restartAt    time.Time // zero when no restart is pending

	control  net.Listener
	stopOnce sync.Once
	stopCh   chan string // shutdown requests from the control port
	reason   string
}

func (p *pid1) boot() {
	p.mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	p.mount("devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755")
	ensureConsole()
	p.mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
	if _, err := os.Lstat("/dev/ptmx"); err != nil {
		os.Symlink("pts/ptmx", "/dev/ptmx")
	}
	p.mount("shm", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777")
	p.mount("run", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755")
	p.mount("tmp", "/tmp", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777")
	p.mount("cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	for _, l := range [][2]string{{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}} {
		os.Symlink(l[0], l[1])
	}
	p.setHostname()
	if err := SetupNetwork(nil); err != nil {
		p.log.Warn("network", "err", err)
	}
	p.agentEnv = agentEnv(p.log)
	if !p.cfg.BootOnly {
		p.stopCh = make(chan string, 1)
		p.backoff = 100 * time.Millisecond
	}
	// The agent starts as soon as AF_VSOCK exists (vsock.ko comes first in
	// the list), so its own start-up (about a second under TCG) overlaps the
	// virtio transport's probe. A data disk must be mounted first, though.
	early := p.cfg.Agent != "" && !p.cfg.BootOnly && p.cfg.DataDisk == ""
	t0 := time.Now()
	n, err := LoadModules(p.cfg.Modules, p.log, func() {
		if early && p.agentPID == 0 && p.agentStarted.IsZero() && vsockFamily() {
			p.startAgent()
		}
	})
	if err != nil {
		p.log.Warn("modules", "err", err)
	}
	p.modulesTook = time.Since(t0)
	p.log.Info("modules loaded", "count", n, "took", p.modulesTook.Round(time.Millisecond))
	if p.cfg.Net != nil {
		if err := SetupNetwork(p.cfg.Net); err != nil {
			p.log.Warn("network", "err", err)
		}
	}
	if p.cfg.DataDisk != "" {
		p.mount(p.cfg.DataDisk, p.cfg.DataDir, "ext4", 0, "")
	}
	if !p.cfg.BootOnly {
		p.startControl()
		if p.cfg.Agent != "" && p.agentStarted.IsZero() {
			p.startAgent()
		}
	}
}

// vsockFamily reports whether the kernel knows AF_VSOCK yet.
func vsockFamily() bool {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// mount creates the mount point and mounts, logging instead of failing:
// PID 1 carries on with what works.
func (p *pid1) mount(src, dst, fstype string, flags uintptr, data string) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		p.log.Warn("mkdir", "path", dst, "err", err)
	}
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
		p.log.Warn("mount", "fstype", fstype, "path", dst, "err", err)
		return
	}
	p.mounts = append(p.mounts, dst)
}

// ensureConsole points fds 0-2 at /dev/console when the kernel could not
// open it for us (no /dev/console in the initramfs).
func ensureConsole() {
	if _, err := unix.FcntlInt(1, unix.F_GETFD, 0); err == nil {
		return
	}
	fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	for i := 0; i < 3; i++ {
		unix.Dup3(fd, i, 0)
	}
	if fd > 2 {
		unix.Close(fd)
	}
}

func (p *pid1) setHostname() {
	h := p.cfg.Hostname
	if h == "" {
		if b, err := os.ReadFile("/etc/hostname"); err == nil {
			h = strings.TrimSpace(string(b))
		}
	}
	if h == "" {
		h = DefaultHostname
	}
	if err := unix.Sethostname([]byte(h)); err != nil {
		p.log.Warn("sethostname", "hostname", h, "err", err)
	}
}

// LoadModules loads the modules listed in file (absolute .ko paths,
// dependencies first) with finit_module. Already loaded ones are fine; a
// missing list means a kernel without modules.
// after runs after each module. It returns how many were loaded.
func LoadModules(file string, log *slog.Logger, after func()) (int, error) {
	if file == "" {
		return 0, nil
	}
	fd, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer fd.Close()
	var failed []string
	n := 0
	s := bufio.NewScanner(fd)
	for s.Scan() {
		path := strings.TrimSpace(s.Text())
		if path == "" || strings.HasPrefix(path, "#") {
			continue
		}
		if err := loadModule(path); err != nil {
			log.Warn("finit_module", "module", path, "err", err)
			failed = append(failed, path)
		} else {
			n++
		}
		if after != nil {
			after()
		}
	}
	if len(failed) > 0 {
		return n, fmt.Errorf("modules from %s: %d failed to load: %s", file, len(failed), strings.Join(failed, ", "))
	}
	return n, s.Err()
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// startControl listens on the vsock control port: a line "poweroff" powers
// the VM off (the host's clean-shutdown path; the agent has no say in it).
func (p *pid1) startControl() {
	if p.cfg.ControlPort == 0 {
		return
	}
	l, err := vsock.Listen(p.cfg.ControlPort, nil)
	if err != nil {
		p.log.Warn("control port", "port", p.cfg.ControlPort, "err", err)
		return
	}
	p.control = l
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.serveControl(c)
		}
	}()
}

func (p *pid1) serveControl(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	switch cmd := strings.TrimSpace(line); cmd {
	case "poweroff":
		c.Write([]byte("OK poweroff\n"))
		select {
		case p.stopCh <- "control port":
		default:
		}
	case "ping":
		c.Write([]byte("OK pong\n"))
	default:
		fmt.Fprintf(c, "ERR unknown command %q\n", cmd)
	}
}

// agentEnv is a base environment overridden by the image's env file.
func agentEnv(log *slog.Logger) []string {
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=linux"}
	f, err := os.Open(envfile.Path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("image environment", "path", envfile.Path, "err", err)
		}
		return env
	}
	defer f.Close()
	vars, err := envfile.Parse(f)
	if err != nil {
		log.Warn("image environment", "path", envfile.Path, "err", err)
		return env
	}
	for _, kv := range envfile.Environ(vars) {
		k, _, _ := strings.Cut(kv, "=")
		env = slices.DeleteFunc(env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
		env = append(env, kv)
	}
	return env
}

func (p *pid1) startAgent() {
	p.restartAt = time.Time{}
	devnull, err := os.Open("/dev/null")
	if err != nil {
		devnull = nil
	}
	attr := &os.ProcAttr{
		Dir:   "/",
		Env:   p.agentEnv,
		Files: []*os.File{devnull, os.Stdout, os.Stderr},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	}
	proc, err := os.StartProcess(p.cfg.Agent, append([]string{p.cfg.Agent}, p.cfg.AgentArgs...), attr)
	if devnull != nil {
		devnull.Close()
	}
	if err != nil {
		p.log.Error("start agent", "path", p.cfg.Agent, "err", err)
		p.scheduleRestart()
		return
	}
	// The global reaper owns the exit status; Release drops os.Process's claim.
	p.agentPID = proc.Pid
	proc.Release()
	p.agentStarted = time.Now()
	p.log.Info("agent started", "path", p.cfg.Agent, "pid", p.agentPID)
}

func (p *pid1) scheduleRestart() {
	if time.Since(p.agentStarted) > 10*time.Second {
		p.backoff = 100 * time.Millisecond
	}
	p.restartAt = time.Now().Add(p.backoff)
	p.log.Info("agent restart scheduled", "in", p.backoff)
	p.backoff = min(p.backoff*2, 5*time.Second)
}

// reap collects every exited child; the agent's exit schedules a restart.
func (p *pid1) reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
		if pid == p.agentPID && p.agentPID != 0 {
			p.agentPID = 0
			if p.reason != "" {
				p.log.Info("agent stopped", "pid", pid, "status", describe(ws))
				continue
			}
			p.log.Warn("agent exited", "pid", pid, "status", describe(ws))
			p.scheduleRestart()
		}
	}
}

func describe(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}

func (p *pid1) loop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if !p.restartAt.IsZero() {
			timer.Reset(max(time.Until(p.restartAt), 0))
		} else {
			timer.Reset(time.Hour)
		}
		select {
		case s := <-p.sigs:
			if s == unix.SIGCHLD {
				p.reap()
				continue
			}
			p.reason = "signal " + s.String()
			return
		case r := <-p.stopCh:
			p.reason = r
			return
		case <-timer.C:
			if !p.restartAt.IsZero() && !time.Now().Before(p.restartAt) {
				p.startAgent()
			}
		}
	}
}

// shutdown stops every process (TERM, then KILL after a grace period),
// syncs, unmounts what it mounted and powers off.
func (p *pid1) shutdown(reason string) error {
	if p.reason == "" {
		p.reason = reason
	}
	p.log.Info("shutting down", "reason", p.reason)
	if p.control != nil {
		p.control.Close()
	}
	// kill(-1) from PID 1 reaches every process of this PID namespace but
	// PID 1 itself.
	unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		p.reap()
		if !hasChildren() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if hasChildren() {
		p.log.Warn("processes left after SIGTERM; sending SIGKILL")
		// Killed processes' children reach PID 1 only as their parents die:
		// keep killing and reaping until none is left (bounded).
		for i := 0; i < 500 && hasChildren(); i++ {
			unix.Kill(-1, unix.SIGKILL)
			p.reap()
			time.Sleep(10 * time.Millisecond)
		}
	}
	unix.Sync()
	for i := len(p.mounts) - 1; i >= 0; i-- {
		m := p.mounts[i]
		if err := unix.Unmount(m, 0); err != nil {
			// Still busy: make it read-only first, so a disk is left clean
			// even though the detached mount lives on until power-off.
			rerr := unix.Mount("", m, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
			if derr := unix.Unmount(m, unix.MNT_DETACH); derr != nil || rerr != nil {
				p.log.Warn("umount", "path", m, "err", err, "remount_ro", rerr, "detach", derr)
			}
		}
	}
	unix.Sync()
	fmt.Fprintln(os.Stdout, PoweroffMarker)
	return p.cfg.Poweroff()
}

// hasChildren reports whether PID 1 still has children (exited or not).
func hasChildren() bool {
	var si unix.Siginfo
	err := unix.Waitid(unix.P_ALL, 0, &si, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return !errors.Is(err, unix.ECHILD)
}
