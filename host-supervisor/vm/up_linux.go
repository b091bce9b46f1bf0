package vm

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sailbox/sailbox/host-supervisor/repl"
	"golang.org/x/sys/unix"
)

// UpOptions are what `host-supervisor vm up` takes.
type UpOptions struct {
	Name  string
	Dir   string // run directory (sockets, console.log, initramfs)
	Init  string // static arm64 imageinit
	Agent string // static arm64 guest-agent (not used with Image)
	// Image is a bootable ext4 root image (rootfs.ext4, or the image
	// directory holding it): the VM boots its /sbin/init and agent, and
	// guest writes go to a temporary overlay.
	Image     string
	MemoryMiB int
	CPUs      int
	DataFrom  string // populate an ext4 data disk (mounted at /data) from this host dir
	DataMiB   int
	// IsolatedNet gives the guest an eth0 on a restricted user network.
	IsolatedNet bool
	Append      []string // extra kernel command line words
	Console     io.Writer
	Logger      *slog.Logger
}

// Up fetches the kernel and busybox (cached), writes the initramfs and
// boots the VM with the vsock backend. It returns once the agent answers
// at vm.AgentAddr().
func Up(ctx context.Context, o UpOptions) (*VM, error) {
	if o.Name == "" {
		o.Name = "sailbox"
	}
	if o.Dir == "" {
		base := os.Getenv("XDG_RUNTIME_DIR")
		if base == "" {
			base = os.TempDir()
		}
		o.Dir = filepath.Join(base, "sailbox-vm-"+o.Name)
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, err
	}
	need := []string{o.Init, o.Agent}
	if o.Image != "" {
		need = need[:1]
		if fi, err := os.Stat(o.Image); err == nil && fi.IsDir() {
			o.Image = filepath.Join(o.Image, "rootfs.ext4")
		}
		if _, err := os.Stat(o.Image); err != nil {
			return nil, fmt.Errorf("vm %s: image: %w", o.Name, err)
		}
	}
	for _, p := range need {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("vm %s: %w (run `make build` for bin/linux-arm64/)", o.Name, err)
		}
	}
	f := &Fetcher{Logger: o.Logger}
	k, err := f.Kernel(ctx)
	if err != nil {
		return nil, err
	}
	bb, err := f.Busybox(ctx)
	if err != nil {
		return nil, err
	}
	if o.Image != "" {
		if err := checkImageKernel(o.Image, k); err != nil {
			return nil, fmt.Errorf("vm %s: %w", o.Name, err)
		}
	}
	mods := append(append([]string{}, VsockModules...), AgentModules...)
	cfg := Config{Name: o.Name, Dir: o.Dir, Kernel: k, MemoryMiB: o.MemoryMiB, CPUs: o.CPUs,
		Cmdline: append([]string{"sailbox.hostname=" + o.Name}, o.Append...), NewVsock: DefaultVsock,
		Console: o.Console, Logger: o.Logger, IsolatedNet: o.IsolatedNet}
	if o.IsolatedNet {
		mods = append(mods, NetModules...)
	}
	agent := o.Agent
	if o.Image != "" {
		cfg.RootDisk = o.Image
		agent = "" // the image's own
		mods = append(mods, DiskModules...)
	}
	if o.DataFrom != "" || o.DataMiB > 0 {
		if o.Image == "" {
			mods = append(mods, DiskModules...)
		}
		cfg.DataDisk = filepath.Join(o.Dir, "data.ext4")
		if err := MakeDataDisk(ctx, cfg.DataDisk, o.DataMiB, o.DataFrom); err != nil {
			return nil, err
		}
	}
	cfg.Initramfs = filepath.Join(o.Dir, "initramfs.cpio")
	if err := BuildInitramfs(cfg.Initramfs, Image{Init: o.Init, Agent: agent, Busybox: bb, Kernel: k, Modules: mods, Hostname: o.Name}); err != nil {
		return nil, err
	}
	v, err := Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := v.WaitReady(ctx); err != nil {
		v.Kill()
		return nil, err
	}
	if _, err := v.WaitAgent(ctx); err != nil {
		v.Kill()
		return nil, err
	}
	return v, nil
}

// checkImageKernel compares the kernel an image's modules were taken from
// (image.json beside the image, written by rootfs's builder) with the one
// the VM boots; an image without a manifest is taken as is.
func checkImageKernel(image string, k Kernel) error {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(image), "image.json"))
	if err != nil {
		return nil
	}
	var m struct {
		Kernel *struct {
			Release string `json:"release"`
		} `json:"kernel"`
	}
	if err := json.Unmarshal(b, &m); err != nil || m.Kernel == nil || m.Kernel.Release == "" {
		return nil
	}
	if m.Kernel.Release != k.Release {
		return fmt.Errorf("image %s carries modules for kernel %s, the VM boots %s: rebuild the image", image, m.Kernel.Release, k.Release)
	}
	return nil
}

// RunUp is `host-supervisor vm up [flags]`: boot a VM and open the REPL on
// its agent when stdin is a terminal (or --repl); otherwise print the
// agent's address and keep the VM up until SIGINT/SIGTERM (or ctx ends).
// Either way the VM is then powered off cleanly. It returns the exit status.
func RunUp(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return RunUpIO(ctx, args, os.Stdin, stdout, stderr)
}

// RunUpIO is RunUp with an explicit stdin for the REPL.
func RunUpIO(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vm up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	exeDir := "."
	if exe, err := os.Executable(); err == nil {
		exeDir = filepath.Dir(exe)
	}
	var o UpOptions
	var quiet bool
	var appendArgs string
	fs.StringVar(&o.Name, "name", "sailbox", "VM name (also its hostname)")
	fs.StringVar(&o.Dir, "dir", "", "run directory (default $XDG_RUNTIME_DIR or /tmp, sailbox-vm-NAME)")
	fs.StringVar(&o.Init, "init", filepath.Join(exeDir, "linux-arm64", "imageinit"), "static arm64 imageinit")
	fs.StringVar(&o.Agent, "agent", filepath.Join(exeDir, "linux-arm64", "guest-agent"), "static arm64 guest-agent (the image's own with --image)")
	fs.StringVar(&o.Image, "image", "", "boot this ext4 root image (a rootfs.ext4 or its image directory) instead of the initramfs alone")
	fs.IntVar(&o.MemoryMiB, "memory", 512, "guest memory in MiB")
	fs.IntVar(&o.CPUs, "cpus", 1, "guest vCPUs")
	fs.StringVar(&o.DataFrom, "data-from", "", "host directory copied into an ext4 data disk mounted at /data")
	fs.IntVar(&o.DataMiB, "data-size", 0, "data disk size in MiB (0: no disk unless --data-from; then 64)")
	fs.BoolVar(&o.IsolatedNet, "isolated-net", false, "give the guest eth0 (10.0.2.15/24) on QEMU's user network with restrict=on")
	fs.StringVar(&appendArgs, "append", "", "extra kernel command line")
	fs.BoolVar(&quiet, "quiet", false, "do not copy the guest console to stderr (always off with the REPL)")
	replMode := fs.String("repl", "auto", "open the REPL on the agent: auto (when stdin is a terminal), true or false")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vm up: unexpected arguments %q\n", fs.Args())
		return 2
	}
	o.Append = strings.Fields(appendArgs)
	useREPL := *replMode == "true" || (*replMode == "auto" && isTerminal(stdin))
	if !quiet && !useREPL {
		o.Console = stderr
	}
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	v, err := Up(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	info := fmt.Sprintf("vm %s up in %v\nagent: %s\nconsole: %s\n", o.Name, time.Since(start).Round(time.Millisecond),
		v.AgentAddr(), filepath.Join(v.cfg.Dir, "console.log"))
	rc := 0
	if useREPL {
		fmt.Fprint(stderr, info)
		rc = runREPL(ctx, v, stdin, stdout, stderr)
	} else {
		fmt.Fprintf(stdout, "%stry: host-supervisor exec --agent %s -- uname -a\n", info, v.AgentAddr())
		select {
		case <-ctx.Done():
		case <-v.Done():
			fmt.Fprintf(stderr, "vm %s: QEMU exited: %v\n", o.Name, v.exitErr)
			return 1
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	clean, err := v.Shutdown(sctx, 20*time.Second)
	if !clean {
		fmt.Fprintf(stderr, "vm %s: no clean power-off (%v); QEMU was stopped\n", o.Name, err)
		return 1
	}
	fmt.Fprintf(stderr, "vm %s powered off\n", o.Name)
	return rc
}

// runREPL runs the debugging REPL on the VM's agent until it exits.
func runREPL(ctx context.Context, v *VM, stdin io.Reader, stdout, stderr io.Writer) int {
	b, err := repl.DialAgent(v.AgentAddr())
	if err != nil {
		fmt.Fprintln(stderr, "error:", err)
		return 1
	}
	defer b.Close()
	return repl.Run(ctx, repl.Config{Backend: b, In: stdin, Out: stdout, Err: stderr, Gone: v.Done(),
		Prompt: v.cfg.Name + "> ",
		Banner: "sailbox arm64 VM " + v.cfg.Name + " (agent " + v.AgentAddr() + "). Type help; try: exec uname -a. Ctrl-D or exit powers it off."})
}

// isTerminal is isatty (a character device such as /dev/null is not one).
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
