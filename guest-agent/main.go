// Command guest-agent is sailbox's in-guest daemon: it executes commands,
// moves files, probes listeners and quiesces the guest for snapshots, served
// over ttrpc on AF_VSOCK (or a unix socket for local use and tests).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/sailbox/sailbox/guest-agent/execengine"
	"github.com/sailbox/sailbox/guest-agent/listener"
	"github.com/sailbox/sailbox/guest-agent/pyfunc"
	"github.com/sailbox/sailbox/guest-agent/reaper"
	"github.com/sailbox/sailbox/guest-agent/service"
	"github.com/sailbox/sailbox/internal/version"
	agentv1 "github.com/sailbox/sailbox/protocol/agent/v1"
	"github.com/sailbox/sailbox/protocol/transport"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "guest-agent:", err)
		os.Exit(1)
	}
}

type options struct {
	listen      string
	stateDir    string
	outputCap   uint64
	finishedTTL time.Duration
	killGrace   time.Duration
	logLevel    string

	freezeHooks    string
	freezeRoot     string
	freezeWatchdog time.Duration

	python string
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.listen, "listen", "vsock://:10000", "address to serve on: vsock://:PORT or unix:///path")
	flag.StringVar(&o.stateDir, "state-dir", defaultStateDir(), "scratch state (exec output spools); must not be a filesystem that gets frozen")
	flag.Uint64Var(&o.outputCap, "output-cap", 64<<20, "default per-stream output cap in bytes (past it output is counted and reported truncated)")
	flag.DurationVar(&o.finishedTTL, "finished-ttl", time.Hour, "release finished execs nobody released after this long")
	flag.DurationVar(&o.killGrace, "kill-grace", 2*time.Second, "time between SIGTERM and SIGKILL when an exec times out")
	flag.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	flag.StringVar(&o.freezeHooks, "freeze-hooks", "/etc/sailbox/freeze-hooks.d", "executables run with 'freeze' before a snapshot freeze and 'thaw' after the thaw")
	flag.StringVar(&o.freezeRoot, "freeze-root", "/", "freeze only filesystems mounted at or below this path (set it outside a VM)")
	flag.DurationVar(&o.freezeWatchdog, "freeze-watchdog", 60*time.Second, "thaw by itself when no thaw arrives this long after a freeze")
	flag.StringVar(&o.python, "python", pyfunc.DefaultPython, "python interpreter for function calls: a path or a name looked up in PATH at each call")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version.Version)
		os.Exit(0)
	}
	return o
}

// defaultStateDir prefers /run (tmpfs in the guest) and falls back to the
// user's runtime or temp dir when /run is not writable (local use).
func defaultStateDir() string {
	if unixAccessW("/run") {
		return "/run/sailbox-agent"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "sailbox-agent")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("sailbox-agent-%d", os.Getuid()))
}

func unixAccessW(dir string) bool { return syscall.Access(dir, 2 /* W_OK */) == nil }

func run() error {
	o := parseFlags()
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	rp, err := reaper.New(log)
	if err != nil {
		return fmt.Errorf("become subreaper: %w", err)
	}
	// Each agent process gets its own spool dir, so a restarted agent never
	// mixes its state with that of the one before it.
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", o.stateDir, err)
	}
	execs, err := execengine.NewManager(ctx, execengine.Config{
		StateDir: o.stateDir, DefaultOutputCap: o.outputCap, FinishedTTL: o.finishedTTL,
		KillGrace: o.killGrace, Logger: log,
	}, rp)
	if err != nil {
		return err
	}

	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	// The agent's services. Each is a thin layer in guest-agent/service.
	agentv1.RegisterAgentService(srv, &service.Agent{Started: time.Now(), M: execs})
	execSvc := &service.Exec{M: execs}
	agentv1.RegisterExecService(srv, execSvc)
	agentv1.RegisterListenerService(srv, &service.Listener{P: listener.Prober{Logger: log}})
	snap, err := service.NewSnapshot(service.SnapshotConfig{
		StateDir: o.stateDir, HooksDir: o.freezeHooks, Root: o.freezeRoot, Watchdog: o.freezeWatchdog, Starter: rp, Logger: log,
	})
	if err != nil {
		return err
	}
	agentv1.RegisterSnapshotService(srv, snap)
	filesSvc := &service.Files{Writable: snap.F.CheckWritable}
	agentv1.RegisterFilesService(srv, filesSvc)
	agentv1.RegisterFunctionService(srv, &service.Function{R: &pyfunc.Runner{Python: o.python, Starter: rp}})

	l, err := transport.Listen(o.listen)
	if err != nil {
		return err
	}
	log.Info("guest agent serving", "listen", o.listen, "version", version.Version, "state_dir", o.stateDir, "pid", os.Getpid())
	errc := make(chan error, 1)
	// Mux: raw data connections (service/data.go: exec output, file reads) share the listener.
	go func() { errc <- srv.Serve(ctx, service.Mux(l, execSvc, filesSvc, log)) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", o.listen, err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	execs.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	srv.Close()
	return nil
}
