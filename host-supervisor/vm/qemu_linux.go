package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/agentclient"
	"github.com/sailbox/sailbox/imageinit/pid1"
	"github.com/sailbox/sailbox/protocol/transport"
)

// AgentPort is the guest agent's vsock port; ControlPort is imageinit's.
const (
	AgentPort   = 10000
	ControlPort = pid1.DefaultControlPort
)

// VsockDevice is a running vhost-user-vsock backend: it serves QEMU on a
// vhost-user socket and the host on a Firecracker-style hybrid socket.
type VsockDevice interface {
	Serve(ctx context.Context) error
	Close() error
}

// NewVsockFunc creates a vsock backend listening on vhostUser (for QEMU)
// and hybrid (for the host) for the guest with CID cid.
type NewVsockFunc func(cid uint64, vhostUser, hybrid string, log *slog.Logger) (VsockDevice, error)

// Config describes one VM.
type Config struct {
	Name      string
	Dir       string // run directory: sockets, console log (must exist)
	Kernel    Kernel
	Initramfs string
	MemoryMiB int // default 512
	CPUs      int // default 1
	// Cmdline words appended to the kernel command line (sailbox.* keys,
	// see imageinit/pid1.ParseCmdline).
	Cmdline []string
	// RootDisk is a bootable raw ext4 root image (rootfs's builder makes
	// them): attached as /dev/vda, imageinit on the initramfs switches to it
	// and execs its /sbin/init. Guest writes go to a temporary overlay
	// (snapshot=on) unless RootWritable, so a cached image stays as built.
	RootDisk     string
	RootWritable bool
	// DataDisk is a raw ext4 image attached as virtio-blk (/dev/vda, or
	// /dev/vdb behind a root disk) and mounted at /data by imageinit.
	DataDisk string
	// IsolatedNet adds a virtio-net NIC on QEMU's user network with
	// restrict=on (the guest reaches nothing outside; no host forwarding)
	// and configures eth0 through ip=; the image needs NetModules.
	IsolatedNet bool
	// NewVsock attaches a vhost-user-vsock device when set (DefaultVsock
	// once the backend exists); the agent is then reached at AgentAddr.
	NewVsock NewVsockFunc
	GuestCID uint64 // default 3
	// Console gets a copy of the serial console (Dir/console.log has it all).
	Console io.Writer
	Logger  *slog.Logger
	QEMU    string // default qemu-system-aarch64
}

// BaseCmdline starts every guest kernel command line. cryptomgr.notests
// skips the crypto self-tests at algorithm registration: under TCG they
// cost about half a second of boot, and the guest kernel is not what keeps
// tenants apart (the VM is).
var BaseCmdline = []string{"console=ttyAMA0", "panic=-1", "init=/init", "cryptomgr.notests"}

// IsolatedNetIP is the guest's ip= on the isolated user network (QEMU's
// default slirp addresses).
const IsolatedNetIP = "10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"

// VM is a running QEMU.
type VM struct {
	cfg     Config
	log     *slog.Logger
	cmd     *exec.Cmd
	started time.Time
	qmp     *QMP
	vsock   VsockDevice
	cancel  context.CancelFunc

	readyOnce sync.Once
	ready     chan struct{}
	readyAt   time.Duration

	exited  chan struct{}
	exitErr error

	lock      *os.File // flock on Dir/vm.lock while the VM lives
	cleanOnce sync.Once

	consoleMu   sync.Mutex
	consoleTail []string
}

func (c *Config) defaults() {
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 512
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.GuestCID == 0 {
		c.GuestCID = 3
	}
	if c.QEMU == "" {
		c.QEMU = "qemu-system-aarch64"
	}
	if c.Name == "" {
		c.Name = "sailbox"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// VsockPath is the hybrid vsock socket of the VM.
func (v *VM) VsockPath() string { return filepath.Join(v.cfg.Dir, "vm.vsock") }

// AgentAddr is the agent's address for transport.Dial.
func (v *VM) AgentAddr() string {
	return fmt.Sprintf("hvsock://%s:%d", v.VsockPath(), AgentPort)
}

// ControlAddr is imageinit's control port.
func (v *VM) ControlAddr() string {
	return fmt.Sprintf("hvsock://%s:%d", v.VsockPath(), ControlPort)
}

// QMP returns the machine protocol client.
func (v *VM) QMP() *QMP { return v.qmp }

// Args returns QEMU's command line for cfg (without the binary).
func (c Config) Args() []string {
	machine := "virt"
	var a []string
	if c.NewVsock != nil {
		// vhost-user needs guest memory the backend can map.
		a = append(a, "-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", c.MemoryMiB))
		machine += ",memory-backend=mem"
	}
	cmdline := append(append([]string{}, BaseCmdline...), c.Cmdline...)
	dataDev := "/dev/vda"
	if c.RootDisk != "" {
		cmdline = append(cmdline, "sailbox.root=/dev/vda")
		dataDev = "/dev/vdb"
	}
	if c.DataDisk != "" {
		cmdline = append(cmdline, "sailbox.data="+dataDev)
	}
	if c.IsolatedNet {
		cmdline = append(cmdline, "ip="+IsolatedNetIP)
	}
	a = append(a,
		"-M", machine, "-cpu", "cortex-a72", "-smp", fmt.Sprint(c.CPUs), "-m", fmt.Sprint(c.MemoryMiB),
		"-accel", "tcg", "-nographic", "-no-reboot", "-nic", "none",
		"-name", c.Name,
		"-kernel", c.Kernel.Image, "-initrd", c.Initramfs,
		"-append", strings.Join(cmdline, " "),
		"-qmp", "unix:"+filepath.Join(c.Dir, "qmp.sock")+",server=on,wait=off",
	)
	if c.NewVsock != nil {
		a = append(a, "-chardev", "socket,id=vvsock,path="+filepath.Join(c.Dir, "vhost-user-vsock.sock"),
			"-device", "vhost-user-vsock-pci,chardev=vvsock")
	}
	if c.IsolatedNet {
		// romfile= : no iPXE option ROM (nothing network-boots here).
		a = append(a, "-netdev", "user,id=net0,restrict=on", "-device", "virtio-net-pci,netdev=net0,romfile=")
	}
	// Root before data: PCI order gives the virtio-blk names vda, vdb.
	if c.RootDisk != "" {
		snap := ",snapshot=on"
		if c.RootWritable {
			snap = ""
		}
		a = append(a, "-drive", "file="+c.RootDisk+",if=none,format=raw,id=root"+snap, "-device", "virtio-blk-pci,drive=root")
	}
	if c.DataDisk != "" {
		a = append(a, "-drive", "file="+c.DataDisk+",if=none,format=raw,id=data", "-device", "virtio-blk-pci,drive=data")
	}
	return a
}

// Start boots the VM. The context bounds startup only; Shutdown or Kill
// end the VM.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	cfg.defaults()
	if cfg.Dir == "" {
		return nil, errors.New("vm: Config.Dir is empty")
	}
	// One VM per run directory: its sockets would be taken over otherwise.
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, "vm.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("vm %s: %w", cfg.Name, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("vm %s: run directory %s is in use by another VM", cfg.Name, cfg.Dir)
	}
	for _, s := range []string{"qmp.sock", "vm.vsock", "vhost-user-vsock.sock"} {
		os.Remove(filepath.Join(cfg.Dir, s))
	}
	v := &VM{cfg: cfg, log: cfg.Logger.With("vm", cfg.Name), ready: make(chan struct{}), exited: make(chan struct{}), lock: lock}
	bg, cancel := context.WithCancel(context.Background())
	v.cancel = cancel
	if cfg.NewVsock != nil {
		dev, err := cfg.NewVsock(cfg.GuestCID, filepath.Join(cfg.Dir, "vhost-user-vsock.sock"), v.VsockPath(), v.log)
		if err != nil {
			v.cleanup()
			return nil, fmt.Errorf("vm %s: vsock backend: %w", cfg.Name, err)
		}
		v.vsock = dev
		go func() {
			if err := dev.Serve(bg); err != nil && bg.Err() == nil {
				v.log.Warn("vsock backend stopped", "err", err)
			}
		}()
	}
	logf, err := os.Create(filepath.Join(cfg.Dir, "console.log"))
	if err != nil {
		v.cleanup()
		return nil, err
	}
	cmd := exec.Command(cfg.QEMU, cfg.Args()...)
	cmd.Stdin = nil
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		v.cleanup()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	// Own process group (killed as a whole) and death with us, so a failed
	// test never leaves a QEMU behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	v.cmd = cmd
	v.started = time.Now()
	// Pdeathsig follows the forking OS thread, not the process: start QEMU
	// from a locked thread that lives until QEMU has exited.
	startErr := make(chan error, 1)
	consoleDone := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			startErr <- err
			return
		}
		startErr <- nil
		err := cmd.Wait()
		<-consoleDone
		v.exitErr = err
		close(v.exited)
	}()
	if err := <-startErr; err != nil {
		pw.Close()
		pr.Close()
		logf.Close()
		v.cleanup()
		return nil, fmt.Errorf("vm %s: start %s: %w", cfg.Name, cfg.QEMU, err)
	}
	pw.Close()
	go func() {
		defer close(consoleDone)
		defer logf.Close()
		v.readConsole(pr, logf)
	}()
	v.log.Info("qemu started", "pid", cmd.Process.Pid, "dir", cfg.Dir)
	qctx, qcancel := context.WithTimeout(ctx, 10*time.Second)
	defer qcancel()
	go func() { // QEMU dying before QMP is up ends the dial at once
		select {
		case <-v.exited:
			qcancel()
		case <-qctx.Done():
		}
	}()
	q, err := DialQMP(qctx, filepath.Join(cfg.Dir, "qmp.sock"))
	if err != nil {
		v.Kill()
		return nil, fmt.Errorf("vm %s: %w; console: %s", cfg.Name, err, v.ConsoleTail())
	}
	v.qmp = q
	return v, nil
}

func (v *VM) readConsole(r io.Reader, logf io.Writer) {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := strings.TrimRight(s.Text(), "\r")
		fmt.Fprintln(logf, line)
		if v.cfg.Console != nil {
			fmt.Fprintln(v.cfg.Console, line)
		}
		v.consoleMu.Lock()
		v.consoleTail = append(v.consoleTail, line)
		if len(v.consoleTail) > 40 {
			v.consoleTail = v.consoleTail[len(v.consoleTail)-40:]
		}
		v.consoleMu.Unlock()
		if strings.Contains(line, pid1.ReadyMarker) {
			v.readyOnce.Do(func() {
				v.readyAt = time.Since(v.started)
				close(v.ready)
			})
		}
	}
}

// ConsoleTail returns the last console lines (for error messages).
func (v *VM) ConsoleTail() string {
	v.consoleMu.Lock()
	defer v.consoleMu.Unlock()
	return strings.Join(v.consoleTail, "\n")
}

// Started is when QEMU was started.
func (v *VM) Started() time.Time { return v.started }

// WaitReady waits until imageinit reports the boot steps done and returns
// the time from QEMU's start.
func (v *VM) WaitReady(ctx context.Context) (time.Duration, error) {
	select {
	case <-v.ready:
		return v.readyAt, nil
	case <-v.exited:
		select {
		case <-v.ready:
			return v.readyAt, nil
		default:
		}
		return 0, fmt.Errorf("vm %s: QEMU exited before imageinit was ready (%v); console:\n%s", v.cfg.Name, v.exitErr, v.ConsoleTail())
	case <-ctx.Done():
		return 0, fmt.Errorf("vm %s: waiting for imageinit: %w; console:\n%s", v.cfg.Name, ctx.Err(), v.ConsoleTail())
	}
}

// Done is closed when QEMU has exited.
func (v *VM) Done() <-chan struct{} { return v.exited }

// Wait waits for QEMU to exit and returns its exit error.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.exited:
		return v.exitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RequestPoweroff asks imageinit over its vsock control port to power off.
func (v *VM) RequestPoweroff(ctx context.Context) error {
	if v.vsock == nil {
		return errors.New("vm: no vsock device to reach imageinit's control port")
	}
	c, err := transport.DialWith(ctx, v.ControlAddr(), transport.DialOptions{HandshakeTimeout: time.Second})
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write([]byte("poweroff\n")); err != nil {
		return fmt.Errorf("control %s: %w", v.ControlAddr(), err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("control %s: %w", v.ControlAddr(), err)
	}
	if !strings.HasPrefix(line, "OK") {
		return fmt.Errorf("control %s: %q", v.ControlAddr(), strings.TrimSpace(line))
	}
	return nil
}

// Shutdown powers the guest off cleanly (imageinit stops its processes,
// syncs, unmounts, powers off; QEMU exits thanks to -no-reboot). After
// grace it quits through QMP, then kills QEMU. It reports how it ended.
func (v *VM) Shutdown(ctx context.Context, grace time.Duration) (clean bool, err error) {
	defer v.cleanup()
	select {
	case <-v.exited:
		return true, nil
	default:
	}
	if grace <= 0 {
		grace = 15 * time.Second
	}
	pctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	perr := v.RequestPoweroff(pctx)
	if perr != nil {
		v.log.Warn("clean poweroff request failed", "err", perr)
	} else {
		select {
		case <-v.exited:
			return true, nil
		case <-pctx.Done():
			if strings.Contains(v.ConsoleTail(), "reboot: Power down") {
				perr = fmt.Errorf("vm %s: the guest powered off but QEMU did not exit within %v (stuck tearing down a device?)", v.cfg.Name, grace)
			} else {
				perr = fmt.Errorf("vm %s: the guest did not power off within %v", v.cfg.Name, grace)
			}
		}
	}
	qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
	defer qcancel()
	if v.qmp != nil {
		v.qmp.Quit(qctx)
	}
	select {
	case <-v.exited:
	case <-qctx.Done():
		v.Kill()
	}
	return false, perr
}

// Kill ends QEMU at once and waits for it.
func (v *VM) Kill() {
	if v.cmd != nil && v.cmd.Process != nil {
		syscall.Kill(-v.cmd.Process.Pid, syscall.SIGKILL)
		<-v.exited
	}
	v.cleanup()
}

// cleanup releases what Start took; QEMU is gone (or never ran) by then.
func (v *VM) cleanup() {
	v.cleanOnce.Do(func() {
		if v.qmp != nil {
			v.qmp.Close()
		}
		if v.vsock != nil {
			v.vsock.Close()
		}
		if v.cancel != nil {
			v.cancel()
		}
		v.lock.Close()
	})
}

// PID is QEMU's process id.
func (v *VM) PID() int { return v.cmd.Process.Pid }

// CPUTime is the CPU time (user + system) QEMU has used so far, or in all
// once it has exited: under TCG a steadier boot cost than wall time on a
// busy host.
func (v *VM) CPUTime() time.Duration {
	select {
	case <-v.exited:
		if ps := v.cmd.ProcessState; ps != nil {
			return ps.UserTime() + ps.SystemTime()
		}
		return 0
	default:
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", v.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after "(comm)": state is field 3, utime 14, stime 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, 100 on Linux for every architecture Go supports.
const clockTicks = 100

// WaitAgent waits until the guest agent answers a Ping through the hybrid
// vsock socket and returns the time from QEMU's start.
func (v *VM) WaitAgent(ctx context.Context) (time.Duration, error) {
	if v.vsock == nil {
		return 0, fmt.Errorf("vm %s: no vsock device to reach the agent", v.cfg.Name)
	}
	c, err := agentclient.New(v.AgentAddr(), agentclient.Options{Dial: transport.DialOptions{MaxBackoff: 50 * time.Millisecond}, Logger: v.log})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // QEMU gone: stop waiting
		select {
		case <-v.exited:
			cancel()
		case <-pctx.Done():
		}
	}()
	if err := c.Ping(pctx); err != nil {
		return 0, fmt.Errorf("vm %s: waiting for the agent at %s: %w; console:\n%s", v.cfg.Name, v.AgentAddr(), err, v.ConsoleTail())
	}
	return time.Since(v.started), nil
}
